//! A fake upstream on loopback for demos: `cargo run -p fake-upstream -- --help`.

use std::{net::SocketAddr, sync::Arc};

use clap::Parser;
use credvault::clock::SystemClock;
use fake_upstream::FakeUpstream;

#[derive(Parser)]
#[command(about = "A fake upstream that speaks credvault's four provider styles, for demos")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: SocketAddr,
    /// A PixVerse / basic-session user, as email:password (repeatable).
    #[arg(long = "user", value_name = "EMAIL:PASSWORD")]
    users: Vec<String>,
    /// Lifetime of the tokens it hands out.
    #[arg(long, default_value_t = 120)]
    token_lifetime_secs: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let fake = FakeUpstream::bind(args.listen, Arc::new(SystemClock)).await?;
    fake.set_token_lifetime(args.token_lifetime_secs);
    for user in &args.users {
        let Some((email, password)) = user.split_once(':') else {
            eprintln!("fake-upstream: --user takes email:password");
            std::process::exit(64);
        };
        fake.add_user(email, password);
    }
    println!("fake upstream listening on {}", fake.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
