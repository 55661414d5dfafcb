//! Alert delivery against the real Alertmanager (Debian's prometheus-alertmanager, on loopback):
//! what it stores, read back through its API v2, and the notifier's own metrics, exactly.
//! Needs `prometheus-alertmanager`, `openssl` and `htpasswd` (`cargo xtask test` installs
//! them); without them the tests fail under CI=true, and are skipped (loudly) otherwise.

use std::{
    collections::BTreeMap,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use lab::{
    Lab,
    alertmanager::{Alertmanager, BINARY as ALERTMANAGER, Setup, Web, Webhook},
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use sensor::alerting::{Alert, AlertingConfig, AlertmanagerTarget, BasicAuth, Notifier};
use serde_json::{Value, json};

const SUITE: &str = "alertmanager tests";
const POLL: Duration = Duration::from_secs(5);
/// endsAt of a firing alert: 4 × max(poll 5s, resend 1m).
const VALIDITY: Duration = Duration::from_secs(240);

fn can_run(tools: &[&str]) -> bool {
    // The notifier's log, shown for failing tests (and with --nocapture).
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    for tool in tools {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return lab::cannot_run(
                SUITE,
                &format!("needs `{tool}` (cargo xtask test installs it)"),
            );
        }
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` every 100 ms until it returns Some, or fails after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Now, to the millisecond (Alertmanager keeps milliseconds), so times compare exactly.
fn now_ms() -> SystemTime {
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Alertmanager under test

/// TLS files and a basic-auth user for Alertmanager's --web.config.file.
struct Security {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    user: String,
    password: String,
}

impl Security {
    /// A CA, a server certificate for 127.0.0.1 signed by it, and `user`'s bcrypt hash.
    fn create(dir: &Path, user: &str, password: &str) -> Security {
        let pki = lab::services::TestPki::create(dir).unwrap_or_else(|e| panic!("{e:#}"));
        Security {
            ca: pki.ca,
            cert: pki.cert,
            key: pki.key,
            user: user.into(),
            password: password.into(),
        }
    }

    fn web_config(&self) -> String {
        let out =
            Command::new("htpasswd").args(["-nbB", &self.user, &self.password]).output().unwrap();
        assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let hash = line.trim().strip_prefix(&format!("{}:", self.user)).unwrap().to_string();
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {}: '{hash}'\n",
            self.cert.display(),
            self.key.display(),
            self.user
        )
    }
}

/// An Alertmanager on the host's loopback, `port`, its files in `lab`'s directory; behind TLS
/// and basic auth with `security`. Holds a new group's notification for no time at all.
fn alertmanager(lab: &Lab, port: u16, security: Option<&Security>) -> Alertmanager {
    let mut setup = Setup::new(&format!("am-{port}"), port).group_wait(Duration::ZERO);
    if let Some(s) = security {
        setup = setup.web(Web {
            config: s.web_config(),
            ca_pem: fs::read(&s.ca).unwrap(),
            user: s.user.clone(),
            password: s.password.clone(),
        });
    }
    Alertmanager::start(lab, None, setup).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The lab that owns the Alertmanagers of a test: no namespace, only their files and processes.
fn new_lab() -> Lab {
    Lab::new("gwam").unwrap()
}

// ---------------------------------------------------------------------------------------------
// Notifier side

fn alert(client: &str, starts_at: SystemTime, resolved_at: Option<SystemTime>) -> Alert {
    let map = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
    };
    Alert {
        labels: map(&[
            ("alertname", "UploadTooHigh"),
            ("severity", "warning"),
            ("client", client),
            ("mac", "64:09:80:12:34:56"),
            ("destination", "xiaomi.net"),
        ]),
        annotations: map(&[
            ("summary", &format!("{client} uploads too much")),
            ("description", "5.2 MB to xiaomi.net in 10m, limit 1 MB"),
        ]),
        generator_url: "http://127.0.0.1:9977/policy#upload".into(),
        starts_at,
        resolved_at,
    }
}

fn target(url: &str) -> AlertmanagerTarget {
    AlertmanagerTarget {
        url: url.into(),
        basic_auth: None,
        bearer_token_file: None,
        tls_ca_file: None,
    }
}

fn config(targets: Vec<AlertmanagerTarget>) -> AlertingConfig {
    AlertingConfig { alertmanagers: targets, ..AlertingConfig::default() }
}

fn registry() -> Registry {
    Registry::new_custom(Some("gwsensor".into()), None).unwrap()
}

/// The notifier's metric `name` (without prefix) for one Alertmanager; None when absent.
fn metric(registry: &Registry, name: &str, url: &str) -> Option<f64> {
    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text).unwrap();
    lab::prom::Scrape::parse(&String::from_utf8(text).unwrap())
        .unwrap()
        .get(&format!("gwsensor_{name}"), &[("alertmanager", url)])
}

/// (sent, failed, dropped, queue length, up) of one Alertmanager; up is -1 when absent.
fn counts(registry: &Registry, url: &str) -> (f64, f64, f64, f64, f64) {
    let m = |name| metric(registry, name, url).unwrap_or_else(|| panic!("no {name} for {url}"));
    (
        m("alert_notifications_sent_total"),
        m("alert_notifications_failed_total"),
        m("alert_notifications_dropped_total"),
        m("alert_queue_length"),
        metric(registry, "alertmanager_up", url).unwrap_or(-1.0),
    )
}

/// Asserts that `url`'s counts reach exactly `want` within 5 s: the sender records a send once
/// Alertmanager has answered, which can be just after the alert shows there.
fn assert_counts(registry: &Registry, url: &str, want: (f64, f64, f64, f64, f64)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = counts(registry, url);
    while got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = counts(registry, url);
    }
    assert_eq!(got, want, "counts (sent, failed, dropped, queued, up) for {url}");
}

fn shutdown(notifier: Notifier, grace: Duration) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let start = Instant::now();
    rt.block_on(notifier.shutdown(grace));
    start.elapsed()
}

/// The labels and annotations `alert(client, ..)` must arrive with.
fn assert_is_alert(got: &Value, client: &str) {
    assert_eq!(
        got["labels"],
        json!({"alertname": "UploadTooHigh", "severity": "warning", "client": client,
               "mac": "64:09:80:12:34:56", "destination": "xiaomi.net"})
    );
    assert_eq!(
        got["annotations"],
        json!({"summary": format!("{client} uploads too much"), "description": "5.2 MB to xiaomi.net in 10m, limit 1 MB"})
    );
    assert_eq!(got["generatorURL"], "http://127.0.0.1:9977/policy#upload");
    assert_eq!(got["status"]["state"], "active");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_firing_alert_arrives_and_its_resolution_ends_it() {
    if !can_run(&[ALERTMANAGER]) {
        return;
    }
    let lab = new_lab();
    let am = alertmanager(&lab, free_port(), None);
    let reg = registry();
    let notifier =
        Notifier::start(&config(vec![target(&am.url())]), POLL, &|c| reg.register(c)).unwrap();
    assert_eq!(
        counts(&reg, &am.url()),
        (0.0, 0.0, 0.0, 0.0, -1.0),
        "series at 0 before anything is sent, no up yet"
    );

    let started = now_ms();
    notifier.update_alerts(started, &[alert("redmi-note", started, None)]);
    let got = am.wait_alerts(1, Duration::from_secs(10)).unwrap();
    let seen = SystemTime::now();
    assert_is_alert(&got[0], "redmi-note");
    assert_eq!(got[0]["startsAt"], rfc3339(started));
    // endsAt = the moment of sending + 4 × max(poll, resend interval).
    let ends = parse_time(&got[0]["endsAt"]);
    assert!(
        ends >= started + VALIDITY && ends <= seen + VALIDITY,
        "endsAt {} not sending time + 240s",
        got[0]["endsAt"]
    );
    assert_counts(&reg, &am.url(), (1.0, 0.0, 0.0, 0.0, 1.0));
    assert_eq!(am.received("firing").unwrap(), 1.0);

    // The next poll: still firing, not due again before the resend interval.
    notifier.update_alerts(started + POLL, &[alert("redmi-note", started, None)]);
    let resolved = now_ms();
    notifier.update_alerts(resolved, &[alert("redmi-note", started, Some(resolved))]);
    am.wait_alerts(0, Duration::from_secs(10)).unwrap();
    assert_counts(&reg, &am.url(), (2.0, 0.0, 0.0, 0.0, 1.0));
    assert_eq!((am.received("firing").unwrap(), am.received("resolved").unwrap()), (1.0, 1.0));
    shutdown(notifier, Duration::from_secs(2));
}

#[test]
fn every_alertmanager_gets_it_and_one_that_was_down_gets_it_when_back() {
    if !can_run(&[ALERTMANAGER]) {
        return;
    }
    let lab = new_lab();
    let down_port = free_port();
    let down_url = format!("http://127.0.0.1:{down_port}");
    let up = alertmanager(&lab, free_port(), None);
    let reg = registry();
    let notifier =
        Notifier::start(&config(vec![target(&down_url), target(&up.url())]), POLL, &|c| {
            reg.register(c)
        })
        .unwrap();

    let started = now_ms();
    notifier.update_alerts(started, &[alert("tv", started, None)]);
    // The running one is not held up by the one that is down.
    let at_up = up.wait_alerts(1, Duration::from_secs(5)).unwrap();
    assert_is_alert(&at_up[0], "tv");
    wait_until("a failed attempt at the down Alertmanager", Duration::from_secs(5), || {
        let (sent, failed, dropped, queued, upv) = counts(&reg, &down_url);
        (failed >= 1.0 && queued == 1.0).then(|| assert_eq!((sent, dropped, upv), (0.0, 0.0, 0.0)))
    });

    // It comes back on the same port: the queued alert arrives, with endsAt from the moment
    // it was actually sent (an endsAt from the enqueue time would be older).
    let back_at = now_ms();
    let back = alertmanager(&lab, down_port, None);
    let at_back = back.wait_alerts(1, Duration::from_secs(20)).unwrap();
    assert_is_alert(&at_back[0], "tv");
    assert_eq!(at_back[0]["startsAt"], rfc3339(started));
    assert!(
        parse_time(&at_back[0]["endsAt"]) >= back_at + VALIDITY,
        "stale endsAt {}",
        at_back[0]["endsAt"]
    );
    assert!(parse_time(&at_back[0]["endsAt"]) > parse_time(&at_up[0]["endsAt"]));

    let (sent, failed, dropped, queued, upv) =
        wait_until("the send to the one back up counted", Duration::from_secs(5), || {
            Some(counts(&reg, &down_url)).filter(|c| c.0 == 1.0 && c.3 == 0.0)
        });
    assert!(failed >= 1.0);
    assert_eq!((sent, dropped, queued, upv), (1.0, 0.0, 0.0, 1.0));
    assert_counts(&reg, &up.url(), (1.0, 0.0, 0.0, 0.0, 1.0));
    assert_eq!((back.received("firing").unwrap(), up.received("firing").unwrap()), (1.0, 1.0));
    shutdown(notifier, Duration::from_secs(2));
}

#[test]
fn basic_auth_over_tls_with_a_custom_ca() {
    if !can_run(&[ALERTMANAGER, "openssl", "htpasswd"]) {
        return;
    }
    let lab = new_lab();
    let dir = tempfile::tempdir().unwrap();
    let security = Security::create(dir.path(), "alice", "s3cret");
    let am = alertmanager(&lab, free_port(), Some(&security));
    let password = dir.path().join("password");
    fs::write(&password, "s3cret\n").unwrap();
    let wrong = dir.path().join("wrong");
    fs::write(&wrong, "guess").unwrap();
    let secured = |password_file: &Path, ca: Option<&Path>| AlertmanagerTarget {
        url: am.url(),
        basic_auth: Some(BasicAuth {
            username: "alice".into(),
            password_file: password_file.into(),
        }),
        bearer_token_file: None,
        tls_ca_file: ca.map(Path::to_path_buf),
    };

    let now = now_ms();
    let mut notifiers = Vec::new();
    for (client, target) in [
        ("laptop", secured(&password, Some(&security.ca))),
        ("wrong-password", secured(&wrong, Some(&security.ca))),
        // Without the CA file, the built-in roots do not trust the Alertmanager's certificate.
        ("no-ca", secured(&password, None)),
    ] {
        let reg = registry();
        let n = Notifier::start(&config(vec![target]), POLL, &|c| reg.register(c)).unwrap();
        n.update_alerts(now, &[alert(client, now, None)]);
        notifiers.push((client, n, reg));
    }

    let got = am.wait_alerts(1, Duration::from_secs(10)).unwrap();
    assert_is_alert(&got[0], "laptop");
    for (client, _, reg) in &notifiers {
        let c = wait_until(&format!("{client}'s first attempt"), Duration::from_secs(10), || {
            let c = counts(reg, &am.url());
            (c.4 != -1.0).then_some(c)
        });
        match *client {
            "laptop" => assert_eq!(c, (1.0, 0.0, 0.0, 0.0, 1.0)),
            _ => {
                let (sent, failed, dropped, _, up) = c;
                assert_eq!((sent, failed >= 1.0, dropped, up), (0.0, true, 0.0, 0.0), "{client}");
            }
        }
    }
    // Only the authenticated, verified one got through.
    assert_eq!(am.alerts().unwrap().len(), 1);
    assert_eq!(am.received("firing").unwrap(), 1.0);
    for (_, n, _) in notifiers {
        shutdown(n, Duration::from_millis(500));
    }
}

#[test]
fn reconfiguring_keeps_queues_and_send_times() {
    if !can_run(&[ALERTMANAGER]) {
        return;
    }
    let lab = new_lab();
    let a_port = free_port();
    let a_url = format!("http://127.0.0.1:{a_port}");
    let b = alertmanager(&lab, free_port(), None);
    let reg = registry();
    let notifier =
        Notifier::start(&config(vec![target(&a_url)]), POLL, &|c| reg.register(c)).unwrap();
    let t0 = now_ms();
    let firing = [alert("phone", t0, None)];
    notifier.update_alerts(t0, &firing);
    wait_until("a failed attempt at A", Duration::from_secs(5), || {
        let (_, failed, _, queued, _) = counts(&reg, &a_url);
        (failed >= 1.0 && queued == 1.0).then_some(())
    });

    // B added: it gets the alert at the next poll; A keeps its queue.
    notifier.reconfigure(&config(vec![target(&a_url), target(&b.url())]), POLL).unwrap();
    notifier.update_alerts(t0 + POLL, &firing);
    assert_is_alert(&b.wait_alerts(1, Duration::from_secs(5)).unwrap()[0], "phone");
    let a = alertmanager(&lab, a_port, None);
    assert_is_alert(&a.wait_alerts(1, Duration::from_secs(20)).unwrap()[0], "phone");
    wait_until("the send to A counted", Duration::from_secs(5), || {
        (counts(&reg, &a_url).0 == 1.0).then_some(())
    });

    // A removed: its series end. B kept its send time: the next poll sends nothing.
    notifier.reconfigure(&config(vec![target(&b.url())]), POLL).unwrap();
    assert_eq!(metric(&reg, "alert_notifications_sent_total", &a_url), None);
    notifier.update_alerts(t0 + 2 * POLL, &firing);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(counts(&reg, &b.url()), (1.0, 0.0, 0.0, 0.0, 1.0));
    assert_eq!(b.received("firing").unwrap(), 1.0);

    // A shorter resend interval applies at the next poll.
    let fast = AlertingConfig {
        resend_interval: Duration::from_secs(1),
        ..config(vec![target(&b.url())])
    };
    notifier.reconfigure(&fast, POLL).unwrap();
    notifier.update_alerts(t0 + 3 * POLL, &firing);
    wait_until("the resend to B", Duration::from_secs(5), || {
        (counts(&reg, &b.url()).0 == 2.0).then_some(())
    });
    assert_eq!(b.received("firing").unwrap(), 2.0);
    assert_eq!(a.received("firing").unwrap(), 1.0);
    shutdown(notifier, Duration::from_secs(2));
}

#[test]
fn a_full_queue_drops_the_oldest_and_delivers_the_rest() {
    if !can_run(&[ALERTMANAGER]) {
        return;
    }
    let lab = new_lab();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let reg = registry();
    let cfg = AlertingConfig { queue_capacity: 2, ..config(vec![target(&url)]) };
    let notifier = Notifier::start(&cfg, POLL, &|c| reg.register(c)).unwrap();
    let now = now_ms();
    notifier.update_alerts(
        now,
        &[alert("one", now, None), alert("two", now, None), alert("three", now, None)],
    );
    wait_until("a failed attempt", Duration::from_secs(5), || {
        let (sent, failed, dropped, queued, up) = counts(&reg, &url);
        (failed >= 2.0 && queued == 2.0).then(|| assert_eq!((sent, dropped, up), (0.0, 1.0, 0.0)))
    });
    let am = alertmanager(&lab, port, None);
    let got = am.wait_alerts(2, Duration::from_secs(20)).unwrap();
    let clients: Vec<&str> = got.iter().map(|a| a["labels"]["client"].as_str().unwrap()).collect();
    let mut clients = clients;
    clients.sort_unstable();
    assert_eq!(clients, ["three", "two"]);
    let (sent, _, dropped, queued, up) = counts(&reg, &url);
    assert_eq!((sent, dropped, queued, up), (2.0, 1.0, 0.0, 1.0));
    shutdown(notifier, Duration::from_secs(2));
}

#[test]
fn shutdown_flushes_the_queue_within_the_grace_period() {
    if !can_run(&[ALERTMANAGER]) {
        return;
    }
    let lab = new_lab();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let reg = registry();
    let notifier =
        Notifier::start(&config(vec![target(&url)]), POLL, &|c| reg.register(c)).unwrap();
    let now = now_ms();
    notifier.update_alerts(now, &[alert("console", now, None)]);
    // Three failures: the next retry is 3.2 to 4 s away, so what sends it below is the flush.
    wait_until("three failed attempts", Duration::from_secs(10), || {
        (counts(&reg, &url).1 >= 3.0).then_some(())
    });
    let am = alertmanager(&lab, port, None);
    let took = shutdown(notifier, Duration::from_secs(5));
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_is_alert(&am.wait_alerts(1, Duration::from_secs(2)).unwrap()[0], "console");
    assert_eq!(counts(&reg, &url).0, 1.0);

    // An Alertmanager that stays down does not hold shutdown beyond its grace period.
    let dead_url = format!("http://127.0.0.1:{}", free_port());
    let reg = registry();
    let notifier =
        Notifier::start(&config(vec![target(&dead_url)]), POLL, &|c| reg.register(c)).unwrap();
    notifier.update_alerts(now, &[alert("console", now, None)]);
    let took = shutdown(notifier, Duration::from_secs(1));
    assert!(took < Duration::from_millis(1600), "shutdown took {took:?}");
}

#[test]
fn an_alert_that_fired_and_resolved_during_an_outage_is_notified_firing_then_resolved() {
    if !can_run(&[ALERTMANAGER]) {
        return;
    }
    let lab = new_lab();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let reg = registry();
    let notifier =
        Notifier::start(&config(vec![target(&url)]), POLL, &|c| reg.register(c)).unwrap();
    // Alertmanager is down: the alert fires, then resolves 4 s later.
    let started = now_ms();
    notifier.update_alerts(started, &[alert("laptop", started, None)]);
    wait_until("a failed attempt", Duration::from_secs(5), || {
        let (_, failed, _, queued, _) = counts(&reg, &url);
        (failed >= 1.0 && queued == 1.0).then_some(())
    });
    let resolved = started + Duration::from_secs(4);
    notifier.update_alerts(resolved, &[alert("laptop", started, Some(resolved))]);
    // Both states are kept: the firing one has never reached Alertmanager.
    assert_eq!(counts(&reg, &url).3, 2.0);

    // Back, with a receiver that records what Alertmanager notifies (send_resolved).
    let hook = Webhook::start().unwrap();
    let setup =
        Setup::new(&format!("am-{port}"), port).group_wait(Duration::ZERO).webhook(&hook.url());
    let am = Alertmanager::start(&lab, None, setup).unwrap_or_else(|e| panic!("{e:#}"));
    let got = wait_until("two notifications", Duration::from_secs(40), || {
        let n = hook.notifications();
        (n.len() >= 2).then_some(n)
    });
    let laptop = || vec!["laptop".to_string()];
    assert_eq!(got, [("firing".to_string(), laptop()), ("resolved".to_string(), laptop())]);
    assert_eq!((am.received("firing").unwrap(), am.received("resolved").unwrap()), (1.0, 1.0));
    let (sent, _, dropped, queued, up) = counts(&reg, &url);
    assert_eq!((sent, dropped, queued, up), (2.0, 0.0, 0.0, 1.0));
    // Nothing more comes: no repeat of either.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hook.notifications().len(), 2);
    shutdown(notifier, Duration::from_secs(2));
}
