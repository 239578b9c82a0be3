//! The checker over mangled configs, in-process and bounded: whatever the
//! text, `Config::from_text` answers (a config, or problems that each name
//! a place) and never panics. `fuzz/` runs the same target under libFuzzer
//! for longer; this keeps a few thousand cases in every CI run.

use std::net::SocketAddr;
use std::path::Path;

use baton::config::{Config, set_resolver};

/// Names never reach the network: every name is loopback, `.invalid` fails.
fn offline(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if host.ends_with(".invalid") {
        return Err(format!("{host:?} does not resolve"));
    }
    Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
}

/// Pieces a mutation splices in: YAML punctuation, keys, values, typos.
const PIECES: &[&str] = &[
    ":",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "<<: ",
    "\n",
    "  ",
    "\t",
    "name: x\n",
    "listen: 127.0.0.1:0\n",
    "cluster: app\n",
    "weight: 300\n",
    "timeout: 90d\n",
    "balance: fastest\n",
    "backends: []\n",
    "listner: 1\n",
    "~",
    "true",
    "-1",
    "1e400",
    "0x10",
    "!!str ",
    "? ",
    "|\n",
    ">\n",
    "\u{feff}",
    "é",
];

#[test]
fn mangled_configs_never_panic_and_every_problem_names_a_place() {
    set_resolver(offline);
    let seeds: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/config"))
            .expect("the seed corpus")
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .chain([
                std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"))
                    .unwrap(),
            ])
            .collect();
    assert!(!seeds.is_empty());
    let mut rng = fastrand::Rng::with_seed(0xba70);
    let path = Path::new("/nonexistent/config.yaml");
    let mut refused = 0;
    for round in 0..20_000 {
        let mut text: Vec<char> = seeds[round % seeds.len()].chars().collect();
        for _ in 0..rng.usize(1..6) {
            let at = rng.usize(0..=text.len());
            match rng.u8(0..4) {
                0 if !text.is_empty() => {
                    let end = (at + rng.usize(1..20)).min(text.len());
                    text.drain(at.min(end)..end);
                }
                1 => text
                    .splice(at..at, PIECES[rng.usize(0..PIECES.len())].chars())
                    .for_each(drop),
                2 if !text.is_empty() => {
                    let i = rng.usize(0..text.len());
                    text[i] = PIECES[rng.usize(0..PIECES.len())]
                        .chars()
                        .next()
                        .unwrap_or(' ');
                }
                _ => {
                    // Duplicate a line: duplicate keys, repeated items.
                    let s: String = text.iter().collect();
                    let lines: Vec<&str> = s.lines().collect();
                    if !lines.is_empty() {
                        let l = rng.usize(0..lines.len());
                        let mut out = lines.clone();
                        out.insert(l, lines[l]);
                        text = (out.join("\n") + "\n").chars().collect();
                    }
                }
            }
        }
        let text: String = text.into_iter().collect();
        if let Err(e) = Config::from_text(path, &text) {
            refused += 1;
            assert!(!e.problems.is_empty(), "refused without a problem:\n{text}");
            for p in &e.problems {
                assert!(
                    !p.path.is_empty() || p.position.is_some() || p.message.contains("cannot"),
                    "a problem without a place: {p:?}\n{text}"
                );
                assert!(!p.message.is_empty());
            }
        }
    }
    assert!(refused > 100, "the mutations break configs: {refused}");
}
