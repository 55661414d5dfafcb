//! `sensor`: the gateway sensor agent.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sensor::config::Config;

/// Counts every LAN client's traffic in the kernel (XDP + TC) and serves it as Prometheus
/// metrics.
///
/// Upload (client → anywhere) is counted by XDP on the LAN interface, download by a TC program
/// on its egress, per client MAC and IP and per remote endpoint. Counters live in pinned BPF
/// maps and a state file, so they survive agent restarts and upgrades.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, attach them to the LAN interface and serve /metrics until SIGINT or
    /// SIGTERM (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON; CAP_NET_RAW for DHCP
    /// fingerprints).
    Run {
        /// YAML config file (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and the policy it names: prints `FILE: ok`, or the file, line,
    /// column, what is wrong and how to fix it, and exits 1.
    CheckConfig {
        /// YAML config file.
        file: PathBuf,
    },
    /// Take the programs off the interface: `sensor run` leaves them attached when it stops,
    /// counting into the pinned maps, so that a restart or upgrade loses nothing. Removes the
    /// pinned links (below `pin_path`/links) and the sensor's clsact filters on `interface`.
    /// Stop the agent first (for uninstalling: the package's prerm runs this).
    Detach {
        /// YAML config file of the agent (its `interface` and `pin_path`).
        #[arg(long, short)]
        config: PathBuf,
        /// Also remove the pinned maps: resets the kernel counters (the exported counters
        /// continue from the state file). Needed when a new build changes the map layout.
        #[arg(long)]
        maps: bool,
    },
    /// List the clients the running agent sees: name, MAC, vendor, addresses, traffic.
    Clients {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the current flows, named (SNI, HTTP Host, DNS), with country and ASN.
    Flows {
        /// Only this client (its name or MAC).
        #[arg(long)]
        client: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the running agent's API (its `api_listen`; the default is the default
    /// `api_listen`).
    #[arg(long, env = "GWSENSOR_API", default_value = "http://127.0.0.1:9978")]
    api: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// For an https:// --api: PEM file of the CA that signed the API's certificate (the
    /// certificate itself when self-signed) instead of the built-in roots.
    #[arg(long, env = "GWSENSOR_API_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A user of the API's `api_web.basic_auth_users`; the password is read from
    /// --password-file.
    #[arg(long, env = "GWSENSOR_API_USER", requires = "password_file")]
    user: Option<String>,
    /// File holding the password of --user.
    #[arg(long, env = "GWSENSOR_API_PASSWORD_FILE", requires = "user")]
    password_file: Option<PathBuf>,
    /// File holding the API's bearer token (`api_web.bearer_token_file`).
    #[arg(long, env = "GWSENSOR_API_TOKEN_FILE", conflicts_with = "user")]
    token_file: Option<PathBuf>,
}

/// Largest API answer read: a full flow map of 4Mi flows is about 1.3 GB of JSON; the default
/// 65,536 flows about 21 MB.
const MAX_ANSWER: u64 = 2 << 30;

/// A secret file's content without surrounding whitespace.
fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// The HTTP client for the API: the CA of --ca-file, and the credentials to send.
fn client(api: &ApiArgs) -> anyhow::Result<(ureq::Agent, Option<String>)> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(path) = &api.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
        tls = tls.root_certs(RootCerts::Specific(std::sync::Arc::new(certs)));
    }
    let agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .build()
        .into();
    use base64::Engine as _;
    let authorization = match (&api.user, &api.password_file, &api.token_file) {
        (Some(user), Some(file), _) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", read_secret(file)?))
        )),
        (_, _, Some(file)) => Some(format!("Bearer {}", read_secret(file)?)),
        _ => None,
    };
    Ok((agent, authorization))
}

/// Fetches an API path from the running agent and decodes it.
fn fetch(api: &ApiArgs, path: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let (agent, authorization) = client(api)?;
    let mut request = agent.get(&url);
    if let Some(a) = &authorization {
        request = request.header("Authorization", a);
    }
    let mut response = request.call().with_context(|| {
        format!("cannot reach the agent at {url} (is `sensor run` running? pass --api URL)")
    })?;
    match response.status().as_u16() {
        200 => {}
        401 => anyhow::bail!(
            "{url} answered 401: the API wants credentials (--user and --password-file, or \
             --token-file), and those given (if any) are not accepted"
        ),
        status => anyhow::bail!("{url} answered HTTP {status} (is --api the agent's api_listen?)"),
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))
}

fn print_api(
    api: &ApiArgs,
    path: &str,
    render: impl Fn(&sensor::export::api::View) -> String,
) -> ExitCode {
    let value = match fetch(api, path) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if api.json {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    // The endpoints return parts of a View: fill the rest with defaults.
    match serde_json::from_value::<sensor::export::api::View>(merge_view(value)) {
        Ok(view) => {
            print!("{}", render(&view));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: unexpected answer from the agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn merge_view(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = value.as_object_mut() {
        for key in ["clients", "flows"] {
            obj.entry(key).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        }
        obj.entry("updated").or_insert(serde_json::Value::from(0));
    }
    value
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Clients { api } => {
            print_api(&api, "/api/v1/clients", sensor::export::api::clients_table)
        }
        Command::Flows { client, api } => {
            let path = match &client {
                Some(c) => format!("/api/v1/flows?client={}", percent_encode(c)),
                None => "/api/v1/flows".to_string(),
            };
            print_api(&api, &path, |v| sensor::export::api::flows_table(&v.flows))
        }
        Command::CheckConfig { file } => {
            match Config::load(&file).and_then(|c| c.load_policy().map(|p| (c, p))) {
                Ok((config, policy)) => {
                    println!("{}: ok (interface {})", file.display(), config.interface);
                    if let Some(path) = &config.policy {
                        println!("{}: ok ({} rules)", path.display(), policy.rules.len());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Detach { config, maps } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // anyhow at the binary's edge: the kernel errors' chains print whole with {:#}.
            let done = (|| -> anyhow::Result<Vec<String>> {
                let mut done = sensor::kernel::links::detach(&config.pin_path, &config.interface)?;
                if maps {
                    done.extend(sensor::kernel::loader::unpin_maps(&config.pin_path)?);
                }
                Ok(done)
            })();
            match done {
                Ok(done) if done.is_empty() => {
                    println!(
                        "nothing attached or pinned: {} and {} are clean",
                        config.interface,
                        config.pin_path.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(done) => {
                    for line in done {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let config_path = config;
            let config = match Config::load(&config_path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(sensor::agent::run(config, &config_path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Query-string encoding for a client name (names come from DHCP and may hold anything).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// `sensor clients` and `sensor flows` reach an agent on its default config.
    #[test]
    fn the_default_api_url_is_the_default_api_listen() {
        let cli = Cli::command();
        for command in ["clients", "flows"] {
            let sub = cli.find_subcommand(command).unwrap();
            let api = sub.get_arguments().find(|a| a.get_id() == "api").unwrap();
            let defaults: Vec<String> =
                api.get_default_values().iter().map(|v| v.to_string_lossy().into()).collect();
            assert_eq!(defaults, [format!("http://{}", sensor::config::DEFAULT_API_LISTEN)]);
        }
        let config = Config::parse("interface: br-lan\n", std::path::Path::new("s.yaml")).unwrap();
        assert_eq!(config.api_listen, sensor::config::DEFAULT_API_LISTEN);
    }
}
