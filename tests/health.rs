//! HTTP health checks against a backend whose answer the test switches:
//! 200, 503, no answer, a closed connection. Verdicts follow `rise` and
//! `fall`; the last failure's reason shows on `/status`.

mod support;

use std::time::Duration;

use support::*;

/// The backend's `check_failure` in `/status`, if any.
fn check_failure(baton: &Baton) -> Option<String> {
    let (status, body) = http_get(baton.admin, "/status").expect("/status answers");
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    status["clusters"][0]["backends"][0]["check_failure"]
        .as_str()
        .map(String::from)
}

#[test]
fn http_checks_follow_the_status_and_say_why_a_backend_is_down() {
    let target = CheckTarget::start();
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(target.addr, 1)];
    config.cluster_extra =
        "    health_check: { interval: 100ms, timeout: 400ms, rise: 2, fall: 2, \
         http: { path: /healthz, host: app.test, expect: \"200-299,301\" } }\n"
            .into();
    let baton = Baton::start(&config.yaml());
    let healthy = format!(
        "baton_backend_healthy{{backend=\"{}\",cluster=\"app\"}}",
        target.addr
    );
    let verdict = |up: bool, what: &str| {
        wait_until(Duration::from_secs(10), what, || {
            baton.metric(&healthy) == Some(if up { 1.0 } else { 0.0 })
        })
    };
    let reason_contains = |text: &str| {
        wait_until(Duration::from_secs(10), text, || {
            check_failure(&baton).is_some_and(|r| r.contains(text))
        })
    };

    wait_until(Duration::from_secs(10), "checks arrive", || {
        target.requests.lock().unwrap().len() >= 2
    });
    let first = target.requests.lock().unwrap()[0].clone();
    assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first}");
    assert!(first.contains("\r\nHost: app.test\r\n"), "{first}");
    assert_eq!(baton.metric(&healthy), Some(1.0));
    assert_eq!(check_failure(&baton), None);

    for (answer, reason) in [
        (
            Answer::Status(503),
            "HTTP 503 from GET /healthz (expected 200-299,301)",
        ),
        (Answer::Hang, "no answer within 400ms"),
        (Answer::Close, "closed without answering"),
        (Answer::Status(302), "HTTP 302"),
    ] {
        target.answer(answer);
        verdict(false, &format!("{answer:?} takes the backend down"));
        reason_contains(reason);
        target.answer(Answer::Status(301));
        verdict(true, "two passing checks bring it back");
        assert_eq!(check_failure(&baton), None, "a pass clears the reason");
    }
    let text = baton.log();
    assert!(text.contains("backend down: health checks fail"), "{text}");
}
