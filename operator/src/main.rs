//! `flight-operator` binary: flags in, library out.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    flight_operator::config::parse_and_run().await
}
