use clap::Parser;

/// mimalloc rather than glibc's malloc: glibc keeps freed large blocks in each thread's arena once
/// its mmap threshold has grown (it grows on every large free), so every blocking thread that ever
/// ran argon2 held its 19 MiB for good (`scripts/bench` measured 1 GiB after 256 logins).
/// mimalloc gives freed pages back to the system within milliseconds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
