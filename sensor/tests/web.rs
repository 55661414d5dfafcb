//! The agent's two listeners (issue 16): `/metrics` behind TLS and bcrypt basic auth, scraped
//! by a real Prometheus; 401 with a challenge without or with wrong credentials; the JSON API
//! on a listener of its own (neither serves the other's paths); `sensor clients` on its
//! defaults, and against a secured API with its CA and a password.

use std::{net::SocketAddr, time::Duration};

use lab::{
    LanKind, Topology, TopologyBuilder, UdpReceiver,
    agent::{Agent, Config, DEFAULT_API, DEFAULT_METRICS, Launch, Secured},
    http::Client,
    prometheus::Prometheus,
    send_udp,
    services::TestPki,
};

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";
const CHALLENGE: &str = "Basic realm=\"gateway sensor\", charset=\"UTF-8\"";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A listener's TLS (a CA and a server certificate made in the lab's directory) and `user`
/// with [`PASSWORD`], hashed at bcrypt `cost`; and the CA's file.
fn secured(topo: &Topology, user: &str, cost: u32) -> (Secured, std::path::PathBuf) {
    let pki_dir = topo.lab.dir().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let pki = TestPki::create(&pki_dir).unwrap_or_else(|e| panic!("{e:#}"));
    let secured = Secured {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        ca_pem: pki.ca_pem().unwrap(),
        user: user.into(),
        password: PASSWORD.into(),
        bcrypt_hash: bcrypt::hash(PASSWORD, cost).unwrap(),
    };
    (secured, pki.ca)
}

/// The agent on `config` in the gateway namespace, awaited.
fn start<'t>(topo: &'t Topology, config: &Config) -> Agent<'t> {
    Agent::start(&topo.lab, &topo.gateway.ns, Launch::new(env!("CARGO_BIN_EXE_sensor")), config)
        .unwrap_or_else(|e| panic!("starting the agent: {e:#}"))
}

#[test]
fn prometheus_scrapes_metrics_over_tls_with_basic_auth_and_the_api_is_apart() {
    if !lab::lab_tests_can_run("web tests", &["prometheus", "openssl"]) {
        return;
    }
    let pins = lab::PinDir::new("test", "web");
    let topo = TopologyBuilder::new("gwt-web")
        .lan(LanKind::Veth)
        .client("laptop", [0x64, 0x09, 0x80, 0x77, 0x00, 0x31])
        .build()
        .expect("building the lab");
    let laptop = topo.client("laptop");
    let (secured, ca_file) = secured(&topo, USER, 6);
    let config = Config::for_topology(&topo, &pins)
        .poll(Duration::from_millis(500))
        .metrics_secured(secured.clone());
    // Started and awaited through /metrics over TLS with the password.
    let agent = start(&topo, &config);
    let ns = topo.gateway.ns.clone();
    let (metrics, api) = (DEFAULT_METRICS, DEFAULT_API);

    // Without credentials, with a wrong password, with an unknown user: 401 and the challenge.
    let tls = || Client::trusting(Some(&ns), &secured.ca_pem).unwrap();
    let metrics_url = format!("https://{metrics}/metrics");
    for (who, client) in [
        ("no credentials", tls()),
        ("a wrong password", tls().basic_auth(USER, "wrong")),
        ("an unknown user", tls().basic_auth("grafana", PASSWORD)),
    ] {
        let r = client.get(&metrics_url).unwrap();
        assert_eq!(
            (r.status, r.body.as_str(), r.header("www-authenticate")),
            (401, "unauthorized\n", Some(CHALLENGE)),
            "{who}"
        );
    }
    // /healthz answers service managers without credentials (over TLS all the same).
    assert_eq!(tls().get_ok(&format!("https://{metrics}/healthz")).unwrap(), "ok\n");
    // Plain HTTP to the TLS listener gets no answer.
    assert!(Client::new(Some(&ns)).get(&format!("http://{metrics}/metrics")).is_err());
    // With the password: the metrics.
    let scrape = agent.scrape().unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    assert_eq!(scrape.series("gwsensor_xdp_attach_mode").map(|s| s.value).sum::<f64>(), 1.0);

    // The listeners are apart: no API on the metrics port, no metrics on the API's.
    let authed = tls().basic_auth(USER, PASSWORD);
    for path in ["/api/v1/clients", "/api/v1/flows"] {
        assert_eq!(authed.get(&format!("https://{metrics}{path}")).unwrap().status, 404, "{path}");
    }
    let plain = Client::new(Some(&ns));
    for path in ["/metrics", "/healthz"] {
        assert_eq!(plain.get(&format!("http://{api}{path}")).unwrap().status, 404, "{path}");
    }

    // The API lists the laptop once it has sent something; `sensor clients` and `sensor flows`
    // find the API on their defaults (Agent::cli passes no --api for the default address).
    let inet = &topo.internet.ns;
    let server = UdpReceiver::bind(inet, sa("10.77.2.2:5001")).unwrap();
    send_udp(&laptop.ns, SocketAddr::from((laptop.ipv4, 40001)), server.addr(), 3, 100).unwrap();
    let mac = laptop.mac_text();
    lab::wait::until(
        "the laptop in the API",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let clients = agent.api_json("/api/v1/clients")?;
            Ok(clients["clients"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["mac"] == mac.as_str()))
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    let table = agent.cli(&["clients"]).unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    let mut lines = table.lines();
    assert_eq!(
        lines.next().map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["CLIENT", "MAC", "GROUP", "VENDOR", "IPS", "UPLOAD", "DOWNLOAD", "FLOWS"]),
        "{table}"
    );
    assert!(lines.any(|l| l.contains(&mac)), "{table}");
    let flows = agent.cli(&["flows", "--json"]).unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    let flows: serde_json::Value = serde_json::from_str(&flows).unwrap();
    let laptop_flows: Vec<&serde_json::Value> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["mac"] == mac.as_str() && f["remote_ip"] == "10.77.2.2")
        .collect();
    assert_eq!(laptop_flows.len(), 1, "{flows:#}");
    assert_eq!(
        (
            &laptop_flows[0]["protocol"],
            &laptop_flows[0]["port"],
            &laptop_flows[0]["upload_packets"]
        ),
        (&serde_json::json!("udp"), &serde_json::json!(5001), &serde_json::json!(3)),
        "{flows:#}"
    );

    // A real Prometheus in the gateway scrapes /metrics over TLS with basic auth.
    let password_file = topo.lab.dir().join("prometheus-password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let prometheus_config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: gateway-sensor\n    \
         scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: {USER}\n      \
         password_file: {}\n    static_configs:\n      - targets: [\"{metrics}\"]\n",
        ca_file.display(),
        password_file.display()
    );
    let prom = Prometheus::start(&topo.lab, Some(&ns), sa("127.0.0.1:19090"), &prometheus_config)
        .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    prom.wait_scraping("gateway-sensor", Duration::from_secs(30))
        .unwrap_or_else(|e| agent.fail(&format!("{e:#}\nPrometheus's log:\n{}", prom.log())));
    let attached = prom
        .query("gwsensor_xdp_attach_mode{job=\"gateway-sensor\"} == 1")
        .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(attached[0]["metric"]["interface"], topo.gateway.lan_if.as_str(), "{attached:?}");
    let laptop_bytes = prom
        .query(&format!("gwsensor_client_bytes_total{{mac=\"{mac}\",direction=\"upload\"}}"))
        .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    assert_eq!(laptop_bytes.len(), 1, "{laptop_bytes:?}");
}

#[test]
fn a_secured_api_answers_the_cli_with_its_ca_and_password_only() {
    if !lab::lab_tests_can_run("web tests", &["openssl"]) {
        return;
    }
    let pins = lab::PinDir::new("test", "webapi");
    let topo = TopologyBuilder::new("gwt-webapi")
        .lan(LanKind::Veth)
        .client("tv", [0x64, 0x09, 0x80, 0x77, 0x00, 0x32])
        .build()
        .expect("building the lab");
    let (secured, _) = secured(&topo, "alice", 4);
    let config = Config::for_topology(&topo, &pins)
        .poll(Duration::from_millis(500))
        .api_secured(secured.clone());
    let agent = start(&topo, &config);
    // /metrics stays plain and open (Agent::start waited on it).
    assert!(agent.scrape_text().unwrap().contains("gwsensor_xdp_attach_mode"));
    // The API: 401 and the challenge without the password.
    let ns = topo.gateway.ns.clone();
    let r = Client::trusting(Some(&ns), &secured.ca_pem)
        .unwrap()
        .get(&format!("https://{DEFAULT_API}/api/v1/clients"))
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str(), r.header("www-authenticate")),
        (401, "unauthorized\n", Some(CHALLENGE))
    );
    // The CLI with the CA but no password: refused, saying what it needs.
    let out = agent.cli_output(&["clients"], false).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr,
        format!(
            "error: https://{DEFAULT_API}/api/v1/clients answered 401: the API wants credentials \
             (--user and --password-file, or --token-file), and those given (if any) are not \
             accepted\n"
        )
    );
    // With them: the table.
    let table = agent.cli(&["clients"]).unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    assert_eq!(
        table.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["CLIENT", "MAC", "GROUP", "VENDOR", "IPS", "UPLOAD", "DOWNLOAD", "FLOWS"]),
        "{table}"
    );
    let flows: serde_json::Value =
        serde_json::from_str(&agent.cli(&["flows", "--json"]).unwrap()).unwrap();
    assert!(flows["flows"].is_array(), "{flows}");
}
