//! RELOAD (and SIGHUP): read the credentials file and the server's config file again
//! and swap them in while requests go on (see `store::reload`). An invalid file is refused with its errors; a
//! valid one that cannot replace the running config (another shard count, a namespace
//! removed) is refused with the reason. Either way the running config stays.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::Config;
use crate::model::reload::ReloadReport;
use crate::protocol::{ErrorCode, Response};
use crate::server::Shared;
use crate::store::reload::{prepare, ReloadError};
use crate::store::snapshot;

pub async fn apply(shared: &Arc<Shared>) -> Response {
    match reload(shared).await {
        Ok(report) => Response::Reloaded(Box::new(report)),
        Err((code, message)) => Response::error(code, message),
    }
}

/// Reloads the config file; the error is the code and message a client gets.
pub async fn reload(shared: &Arc<Shared>) -> Result<ReloadReport, (ErrorCode, String)> {
    let _one_at_a_time = shared.reloading.lock().await;
    // The credentials first: a key rotation needs no config change.
    let credentials = shared.reload_credentials().map_err(|e| {
        let message = format!(
            "the credentials file is invalid; the running credentials and config stay: {e}"
        );
        warn!("{message}");
        (ErrorCode::InvalidConfig, message)
    })?;
    if let Some(principals) = credentials {
        info!(principals, "credentials file read again");
    }
    let Some(source) = shared.reload.clone() else {
        return Err((
            ErrorCode::ReloadRefused,
            format!(
                "this server runs on the embedded default config, so there is no file to reload; start it with --config FILE{}",
                if credentials.is_some() { " (the credentials file was read again)" } else { "" }
            ),
        ));
    };
    let shared = shared.clone();
    let refused = |e: ReloadError| {
        let message = format!("reload refused, the running config stays: {e}");
        warn!("{message}");
        (ErrorCode::ReloadRefused, message)
    };
    tokio::task::spawn_blocking(move || {
        let config = Config::load_with(&source.config, &source.overrides).map_err(|e| {
            let message = format!("the config is invalid, the running config stays:\n{e}");
            warn!("{message}");
            (ErrorCode::InvalidConfig, message)
        })?;
        info!(config = %source.config.display(), "reloading the config: building the new engine");
        let current = shared.node();
        let progress = &shared.stats.reload_progress;
        progress.store(0, Ordering::Relaxed);
        let swapped = prepare(&source.data, &current, config, &|percent| {
            progress.store(percent.min(100), Ordering::Relaxed);
        })
        .and_then(|prepared| {
            let _fence = shared.reload_fence.write();
            let (next, report) = prepared.finish(&source.data, &current)?;
            *shared.node.write() = next.clone();
            Ok((next, report))
        });
        progress.store(u8::MAX, Ordering::Relaxed);
        let (next, report) = swapped.map_err(refused)?;
        shared.stats.reloads.fetch_add(1, Ordering::Relaxed);
        if let Some(stream) = &shared.stream {
            // Files already removed stay removed; a longer retention keeps what comes.
            stream.set_retention(next.config().triggers.retention);
        }
        info!("{report}");
        // From now on the log holds events the old config accepted and the new one may
        // not: a snapshot now means a restart never replays them.
        match snapshot::write(&source.data, &next) {
            Ok(written) => info!("{written}"),
            Err(e) => {
                warn!(error = %e, "the snapshot after the reload failed; the log keeps everything")
            }
        }
        Ok(report)
    })
    .await
    .unwrap_or_else(|e| Err((ErrorCode::ReloadRefused, format!("the reload failed: {e}"))))
}
