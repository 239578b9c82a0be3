//! Counts of earlier process generations, so no `_total` goes backwards
//! across an upgrade. Bounded: a predecessor that still drains keeps its
//! last report under its pid; one that exited is folded into a single sum
//! of everything earlier. Memory, scrape time and the hand-over stay flat
//! however many upgrades pass.

use std::collections::HashMap;

use prometheus::proto::{self, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

/// Counter and histogram values of one process (or a sum of several), by
/// series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub series: Vec<CounterSeries>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    Counter,
    Histogram,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterSeries {
    pub name: String,
    pub help: String,
    pub kind: SeriesKind,
    pub labels: Vec<(String, String)>,
    /// The counter's value, or the histogram's sum.
    pub value: f64,
    /// The histogram's count.
    #[serde(default)]
    pub count: u64,
    /// The histogram's cumulative buckets: (upper bound, count).
    #[serde(default)]
    pub buckets: Vec<(f64, u64)>,
}

/// A series' identity: its name and its exact label set, sorted.
type SeriesKey = (String, Vec<(String, String)>);
/// A series' name, labels and the highest value it showed.
pub type Shown = (String, Vec<(String, String)>, f64);

fn key_of(name: &str, labels: &[(String, String)]) -> SeriesKey {
    let mut labels = labels.to_vec();
    labels.sort();
    (name.to_string(), labels)
}

impl CounterSnapshot {
    /// Adds `other` series by series (exact label set); a series only
    /// `other` has is added as it is.
    pub fn add(&mut self, other: &CounterSnapshot) {
        let mut index: HashMap<SeriesKey, usize> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (key_of(&s.name, &s.labels), i))
            .collect();
        for s in &other.series {
            match index.get(&key_of(&s.name, &s.labels)) {
                Some(&i) => {
                    let mine = &mut self.series[i];
                    mine.value += s.value;
                    mine.count += s.count;
                    for (bound, count) in &mut mine.buckets {
                        if let Some((_, add)) = s.buckets.iter().find(|(b, _)| b == bound) {
                            *count += add;
                        }
                    }
                }
                None => {
                    index.insert(key_of(&s.name, &s.labels), self.series.len());
                    self.series.push(s.clone());
                }
            }
        }
    }
}

/// The last counts of a predecessor that still drains.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveCounts {
    pub pid: u32,
    pub generation: u64,
    pub counts: CounterSnapshot,
}

/// Everything earlier generations counted, as the accepting process holds
/// it and hands it to its own successor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// The sum of every predecessor that exited.
    pub folded: CounterSnapshot,
    /// Predecessors still draining, one entry per pid (at most
    /// `upgrade.max_draining` plus the one handing over).
    pub live: Vec<LiveCounts>,
    /// The highest fractional value each series showed in the handing
    /// process's scrapes (one entry per series): the successor never shows
    /// less, even when its sum comes out one rounding step lower.
    #[serde(default)]
    pub shown: Vec<Shown>,
}

impl History {
    /// Replaces a draining predecessor's counts with its newer report.
    pub fn set_live(&mut self, pid: u32, generation: u64, counts: CounterSnapshot) {
        let entry = LiveCounts {
            pid,
            generation,
            counts,
        };
        match self.live.iter_mut().find(|l| l.pid == pid) {
            Some(l) => *l = entry,
            None => self.live.push(entry),
        }
    }

    /// A predecessor exited: its last counts join the sum of everything
    /// earlier.
    pub fn fold(&mut self, pid: u32) {
        if let Some(i) = self.live.iter().position(|l| l.pid == pid) {
            let gone = self.live.swap_remove(i);
            self.folded.add(&gone.counts);
        }
    }

    /// Everything earlier generations counted, summed in one fixed order:
    /// the folded sum, then each live predecessor from the oldest. Our own
    /// counts are added to this last, so a successor's first scrape adds
    /// the same floats in the same order as its predecessor's last one
    /// (plus its own, which only raises it).
    pub fn sum(&self) -> CounterSnapshot {
        let mut sum = self.folded.clone();
        let mut live: Vec<&LiveCounts> = self.live.iter().collect();
        live.sort_by_key(|l| l.generation);
        for l in live {
            sum.add(&l.counts);
        }
        sum
    }
}

/// What a metric may look like in a report: kind and label names.
pub(crate) type Schema = HashMap<String, (SeriesKind, Vec<String>)>;

/// A report larger than this is refused: a predecessor has a few series per
/// listener and backend, not millions.
const MAX_REPORTED_SERIES: usize = 200_000;

/// Checks a report from another process before anything of it is stored:
/// known names of the right kind, exactly the label names we use, finite
/// non-negative values, well-formed buckets.
pub(crate) fn validate(schema: &Schema, counts: &CounterSnapshot) -> Result<(), String> {
    if counts.series.len() > MAX_REPORTED_SERIES {
        return Err(format!("{} series", counts.series.len()));
    }
    for s in &counts.series {
        let Some((kind, names)) = schema.get(&s.name) else {
            return Err(format!("unknown metric {:?}", s.name));
        };
        if *kind != s.kind {
            return Err(format!("{} is not a {:?}", s.name, s.kind));
        }
        let mut got: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        got.sort_unstable();
        let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
        want.sort_unstable();
        if got != want {
            return Err(format!("{} with labels {got:?}", s.name));
        }
        if !s.value.is_finite() || s.value < 0.0 {
            return Err(format!("{} = {}", s.name, s.value));
        }
        let increasing = s
            .buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        let bounds_ok = s.buckets.iter().all(|(b, c)| !b.is_nan() && *c <= s.count);
        if !increasing || !bounds_ok {
            return Err(format!("{} has malformed buckets", s.name));
        }
    }
    Ok(())
}

/// Adds every snapshot of `history` into `families` with one index of the
/// series we have (no scan per series).
pub(crate) fn merge_into(families: &mut Vec<MetricFamily>, history: &History) {
    let earlier = history.sum();
    if earlier.series.is_empty() {
        return;
    }
    // Index only the families a report names (most series are never in
    // one: zeros are not reported).
    let wanted: std::collections::HashSet<&str> =
        earlier.series.iter().map(|s| s.name.as_str()).collect();
    let mut by_name: HashMap<String, usize> = families
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name().to_string(), i))
        .collect();
    let mut by_series: HashMap<SeriesKey, (usize, usize)> = HashMap::new();
    for (fi, f) in families.iter().enumerate() {
        if !wanted.contains(f.name()) {
            continue;
        }
        for (mi, m) in f.get_metric().iter().enumerate() {
            let labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            by_series.insert(key_of(f.name(), &labels), (fi, mi));
        }
    }
    for s in &earlier.series {
        let key = key_of(&s.name, &s.labels);
        let (fi, mi) = match by_series.get(&key) {
            Some(&at) => at,
            None => {
                let fi = *by_name.entry(s.name.clone()).or_insert_with(|| {
                    families.push(new_family(s));
                    families.len() - 1
                });
                let metrics = families[fi].mut_metric();
                metrics.push(new_metric(s));
                let at = (fi, metrics.len() - 1);
                by_series.insert(key, at);
                at
            }
        };
        add(&mut families[fi].mut_metric()[mi], s);
    }
}

fn new_family(s: &CounterSeries) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(s.name.clone());
    f.set_help(s.help.clone());
    f.set_field_type(match s.kind {
        SeriesKind::Counter => MetricType::COUNTER,
        SeriesKind::Histogram => MetricType::HISTOGRAM,
    });
    f
}

fn new_metric(s: &CounterSeries) -> proto::Metric {
    let labels = s
        .labels
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.clone());
            l.set_value(v.clone());
            l
        })
        .collect();
    let mut m = proto::Metric::from_label(labels);
    if s.kind == SeriesKind::Histogram {
        let mut h = proto::Histogram::default();
        h.set_bucket(
            s.buckets
                .iter()
                .map(|&(bound, _)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(bound);
                    b
                })
                .collect(),
        );
        m.set_histogram(h);
    } else {
        m.set_counter(proto::Counter::default());
    }
    m
}

fn add(metric: &mut proto::Metric, s: &CounterSeries) {
    match s.kind {
        SeriesKind::Counter => {
            let mut c = proto::Counter::default();
            c.set_value(metric.get_counter().get_value() + s.value);
            metric.set_counter(c);
        }
        SeriesKind::Histogram => {
            let old = metric.get_histogram();
            let mut h = proto::Histogram::default();
            h.set_sample_count(old.get_sample_count() + s.count);
            h.set_sample_sum(old.get_sample_sum() + s.value);
            h.set_bucket(
                old.get_bucket()
                    .iter()
                    .map(|b| {
                        let add = s
                            .buckets
                            .iter()
                            .find(|(bound, _)| *bound == b.upper_bound())
                            .map_or(0, |(_, c)| *c);
                        let mut nb = proto::Bucket::default();
                        nb.set_upper_bound(b.upper_bound());
                        nb.set_cumulative_count(b.cumulative_count() + add);
                        nb
                    })
                    .collect(),
            );
            metric.set_histogram(h);
        }
    }
}

/// The highest float each series has shown: a sum re-added in another order
/// (a predecessor folded into the earlier sum) can come out one rounding
/// step lower, which Prometheus would read as a counter reset.
#[derive(Default)]
pub(crate) struct HighWater {
    seen: HashMap<SeriesKey, f64>,
}

impl HighWater {
    /// What this process showed, for its successor.
    pub(crate) fn export(&self) -> Vec<Shown> {
        self.seen
            .iter()
            .map(|((name, labels), v)| (name.clone(), labels.clone(), *v))
            .collect()
    }

    /// Starts from what the predecessor showed.
    pub(crate) fn seed(&mut self, shown: &[Shown]) {
        for (name, labels, value) in shown {
            let seen = self.seen.entry(key_of(name, labels)).or_insert(*value);
            *seen = seen.max(*value);
        }
    }

    /// Raises every float counter and histogram sum in `families` to at
    /// least what it showed before, and remembers the new values.
    pub(crate) fn hold(&mut self, families: &mut [MetricFamily]) {
        for f in families.iter_mut() {
            let kind = f.get_field_type();
            if kind != MetricType::COUNTER && kind != MetricType::HISTOGRAM {
                continue;
            }
            let name = f.name().to_string();
            for m in f.mut_metric().iter_mut() {
                let value = if kind == MetricType::COUNTER {
                    m.get_counter().get_value()
                } else {
                    m.get_histogram().get_sample_sum()
                };
                if value.fract() == 0.0 {
                    // Integer counts and sums (zero included) add exactly;
                    // only fractions need holding.
                    continue;
                }
                let labels: Vec<(String, String)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let seen = self.seen.entry(key_of(&name, &labels)).or_insert(value);
                if value < *seen {
                    if kind == MetricType::COUNTER {
                        let mut c = proto::Counter::default();
                        c.set_value(*seen);
                        m.set_counter(c);
                    } else {
                        let mut h = m.get_histogram().clone();
                        h.set_sample_sum(*seen);
                        m.set_histogram(h);
                    }
                } else {
                    *seen = value;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str, listener: &str, value: f64) -> CounterSeries {
        CounterSeries {
            name: name.into(),
            help: String::new(),
            kind: SeriesKind::Counter,
            labels: vec![("listener".into(), listener.into())],
            value,
            count: 0,
            buckets: Vec::new(),
        }
    }

    #[test]
    fn folding_keeps_one_sum_however_many_predecessors_exit() {
        let mut h = History::default();
        for pid in 0..500u32 {
            let counts = CounterSnapshot {
                series: vec![counter("x_total", "web", 1.0)],
            };
            h.set_live(pid, pid as u64, counts);
            h.fold(pid);
        }
        assert!(h.live.is_empty());
        assert_eq!(h.folded.series.len(), 1);
        assert_eq!(h.folded.series[0].value, 500.0);
    }

    #[test]
    fn reports_with_unknown_names_labels_or_values_are_refused() {
        let mut schema = Schema::new();
        schema.insert(
            "x_total".into(),
            (SeriesKind::Counter, vec!["listener".into()]),
        );
        let ok = CounterSnapshot {
            series: vec![counter("x_total", "web", 1.0)],
        };
        assert!(validate(&schema, &ok).is_ok());
        for bad in [
            counter("y_total", "web", 1.0),
            counter("x_total", "web", f64::NAN),
            counter("x_total", "web", -1.0),
            CounterSeries {
                labels: vec![("evil\"".into(), "v".into())],
                ..counter("x_total", "web", 1.0)
            },
            CounterSeries {
                kind: SeriesKind::Histogram,
                ..counter("x_total", "web", 1.0)
            },
        ] {
            let report = CounterSnapshot { series: vec![bad] };
            assert!(validate(&schema, &report).is_err(), "{report:?}");
        }
    }
}
