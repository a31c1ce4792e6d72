use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match shop::cli::run(shop::cli::Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            // Logging may not be set up yet (a configuration error), so this goes to stderr too.
            eprintln!("shop: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
