//! Serves the board alone: `cargo run --release -p rewind-board --example board -- DB_URL ADDR`
//! (for developing the pages and measuring them; `rewind serve` is the product).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(db), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: board DB_URL ADDR (e.g. sqlite://rewind.db 127.0.0.1:8080)");
        return ExitCode::from(2);
    };
    let store = match rewind_store::open(&db).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("board: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("board: cannot listen on {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("board on http://{addr}/");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match rewind_board::serve(listener, rewind_board::AppState::new(store), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("board: {e}");
            ExitCode::FAILURE
        }
    }
}
