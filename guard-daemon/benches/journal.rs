//! Journal-only measurements, called by `cargo xtask bench` (which adds the
//! end-to-end figures through guardd):
//!
//!   journal ingest N            records/s appended → committed, no kernel
//!   journal store PATH N        builds a store of N records at PATH, prints
//!                               the median store-level filtered query time
//!
//! Output is one JSON object on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let out = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ingest", n] => {
            let n: u64 = n.parse().expect("N");
            let rate = support::ingest(n, 4).expect("ingest bench");
            serde_json::json!({"ingest_per_sec": rate})
        }
        ["store", path, n] => {
            let n: u64 = n.parse().expect("N");
            let (t, rows) = support::query(std::path::Path::new(path), n).expect("query bench");
            serde_json::json!({"query_ms": t.as_secs_f64() * 1e3, "rows": rows})
        }
        _ => {
            eprintln!("usage: journal ingest N | journal store PATH N");
            std::process::exit(2);
        }
    };
    println!("{out}");
}
