//! Command-line flags of the operator, each also an environment variable, and the
//! process entry point that `main.rs` calls.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::controller::pool::build::{BuildConfig, DEFAULT_NODE_IMAGE};
use crate::controller::ControllerConfig;
use crate::runtime::{LeaderElection, OperatorConfig};

/// Kubernetes operator for FlightPool and ArrowDataset resources.
#[derive(Debug, Clone, Parser)]
#[command(name = "flight-operator", version, about, long_about = None)]
pub struct Args {
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "FLIGHT_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,

    /// Flight node image for pools that name none.
    #[arg(long, env = "FLIGHT_OPERATOR_NODE_IMAGE", default_value = DEFAULT_NODE_IMAGE)]
    pub node_image: String,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "FLIGHT_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Elect a leader on a Lease so only one replica reconciles.
    #[arg(long, env = "FLIGHT_OPERATOR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "FLIGHT_OPERATOR_LEASE_NAME",
        default_value = "flight-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Identity in the election (the pod name); the host name when unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "FLIGHT_OPERATOR_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// How often storage is scanned for datasets uploaded by atoms, e.g. 30s.
    #[arg(long, env = "FLIGHT_OPERATOR_DISCOVERY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub discovery_interval: Duration,

    /// Delay before retrying a failed reconcile, e.g. 30s.
    #[arg(long, env = "FLIGHT_OPERATOR_RETRY_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_after: Duration,

    /// Log format.
    #[arg(long, env = "FLIGHT_OPERATOR_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

impl Args {
    /// The library configuration these flags describe.
    pub fn operator_config(&self) -> OperatorConfig {
        let identity = self
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("flight-operator-{}", std::process::id()));
        OperatorConfig {
            controllers: ControllerConfig {
                build: BuildConfig {
                    default_image: self.node_image.clone(),
                },
                namespace: self.namespace.clone(),
                discovery_interval: self.discovery_interval,
                retry_after: self.retry_after,
            },
            metrics_addr: Some(self.metrics_addr),
            leader_election: self.leader_election.then(|| LeaderElection {
                lease_name: self.lease_name.clone(),
                namespace: self.lease_namespace.clone(),
                identity,
                duration_seconds: self.lease_duration,
                grace_seconds: (self.lease_duration / 3).max(1),
            }),
        }
    }
}

/// Selects ring as the process-wide rustls crypto provider.
///
/// Both ring and aws-lc-rs are compiled in (kube's TLS and the Flight client's), so rustls
/// cannot pick one by itself and panics on the first TLS connection, e.g. to the API
/// server. Call this before creating a [`kube::Client`]; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Parses flags, connects to the cluster (in-cluster or kubeconfig) and runs the operator.
pub async fn parse_and_run() -> ExitCode {
    let args = Args::parse();
    flight_core::process::init_logging(&args.log_format, "info,kube=warn");
    install_crypto_provider();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "failed to create a Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    match crate::runtime::run(
        client,
        args.operator_config(),
        flight_core::process::shutdown_signal(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_defaults_and_parse() {
        let args = Args::try_parse_from([
            "flight-operator",
            "--namespace",
            "data",
            "--leader-election",
            "false",
            "--discovery-interval",
            "2m",
        ])
        .expect("parses");
        let config = args.operator_config();
        assert_eq!(config.controllers.namespace.as_deref(), Some("data"));
        assert_eq!(
            config.controllers.discovery_interval,
            Duration::from_secs(120)
        );
        assert_eq!(config.controllers.build.default_image, DEFAULT_NODE_IMAGE);
        assert!(config.leader_election.is_none());
        assert_eq!(config.metrics_addr, "0.0.0.0:8080".parse().ok());
    }

    #[test]
    fn a_crypto_provider_is_installed_for_tls() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn leader_election_is_on_by_default() {
        let args = Args::try_parse_from(["flight-operator", "--identity", "op-0"]).expect("parses");
        let le = args.operator_config().leader_election.expect("enabled");
        assert_eq!(le.identity, "op-0");
        assert_eq!(le.lease_name, "flight-operator");
        assert!(le.grace_seconds < le.duration_seconds);
    }
}
