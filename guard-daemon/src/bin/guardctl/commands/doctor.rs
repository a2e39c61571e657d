//! `guardctl doctor`: each protection layer on this host, as enforced,
//! degraded or unavailable, with the reason.

use clap::Args;
use guard_daemon::{
    api::Request,
    doctor::{self, Layer, Status},
};

use super::connect;
use crate::Cli;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, args: &DoctorArgs) -> i32 {
    let (layers, daemon) = match connect(&cli.socket).and_then(|mut c| {
        c.call(1, &Request::Doctor(Default::default()))
            .map_err(|e| super::describe(&e))
    }) {
        Ok(m) => (
            m.get("layers")
                .cloned()
                .and_then(|v| serde_json::from_value::<Vec<serde_json::Value>>(v).ok())
                .unwrap_or_default(),
            true,
        ),
        Err(e) => {
            let mut v: Vec<serde_json::Value> = vec![serde_json::json!({
                "layer": "guardd",
                "status": "unavailable",
                "detail": format!("{e}; cgroup BPF layers cannot be checked"),
            })];
            v.extend(
                doctor::host_layers()
                    .into_iter()
                    .filter_map(|l| serde_json::to_value(l).ok()),
            );
            (v, false)
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"daemon": daemon, "layers": layers})
        );
    } else {
        for l in &layers {
            let layer: Option<Layer> = serde_json::from_value(l.clone()).ok();
            let (name, status, detail) = match &layer {
                Some(l) => (l.layer.clone(), l.status, l.detail.clone()),
                None => (
                    l.get("layer")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                    Status::Unavailable,
                    l.get("detail")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_owned(),
                ),
            };
            let s = match status {
                Status::Enforced => "enforced",
                Status::Degraded => "degraded",
                Status::Unavailable => "unavailable",
            };
            println!("{name:<22} {s:<12} {detail}");
        }
    }
    if daemon { 0 } else { 1 }
}
