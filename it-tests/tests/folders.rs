//! Folders that change under a running bridge: the input folder removed and made again, replaced
//! by a symlink to another folder, the archive folder removed. The bridge logs it, waits (its
//! readiness says why) and carries on: every file lands once, none is left behind.

use it_tests::ports::free_port;
use it_tests::{World, HEADER};
use std::time::{Duration, Instant};

use it_tests::EVENTS;
use it_tests::PATIENCE as LONG;

fn rows(prefix: &str) -> Vec<u8> {
    let mut body = HEADER.to_owned();
    for n in 0..20 {
        body.push_str(&format!(
            "{prefix}-{n},1,view,10,1.00,2026-11-25T12:00:00Z\n"
        ));
    }
    body.into_bytes()
}

/// Waits until `/readyz` of the bridge answers `status` with a body that holds `text`.
async fn wait_for_readiness(addr: &str, status: u16, text: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let (got, body) =
            telemetry::http_get(&format!("http://{addr}/readyz"), Duration::from_secs(5))
                .await
                .unwrap_or((0, String::new()));
        if got == status && body.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed at {got} ({body}), expected {status} with {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn input_and_archive_folders_that_vanish_or_are_replaced_lose_and_double_nothing() {
    let world = World::new("folders").await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut bridge = world.bridge(&["--metrics-addr", &metrics]);
    let _consumer = world.consumer(&[]);
    world.drop_file("a.csv", &rows("a"));
    world.wait_for_count(EVENTS, 20, LONG).await;
    wait_for_readiness(&metrics, 200, "").await;

    // Removed (an operator clearing it, a volume gone): the bridge waits and says why.
    std::fs::remove_dir_all(world.input_dir()).unwrap();
    wait_for_readiness(&metrics, 503, "input folder").await;
    assert!(
        bridge.is_running(),
        "the bridge exited:\n{}",
        bridge.log_text()
    );
    // Made again: files dropped into the new folder are published, without a restart.
    world.drop_file("b.csv", &rows("b"));
    world.wait_for_count(EVENTS, 40, LONG).await;
    wait_for_readiness(&metrics, 200, "").await;

    // Replaced by a symlink to another folder (a re-mount elsewhere).
    let elsewhere = world.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(world.input_dir(), world.dir.path().join("input-old")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, world.input_dir()).unwrap();
    world.drop_file("c.csv", &rows("c"));
    world.wait_for_count(EVENTS, 60, LONG).await;

    // The archive folder removed: made again, and the next file archived into it.
    std::fs::remove_dir_all(world.archive_dir()).unwrap();
    world.drop_file("d.csv", &rows("d"));
    world.wait_for_count(EVENTS, 80, LONG).await;
    let deadline = Instant::now() + LONG;
    while !world.archive_dir().join("d.csv").exists() || world.files_waiting() > 0 {
        assert!(Instant::now() < deadline, "d.csv was not archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        bridge.is_running(),
        "the bridge exited:\n{}",
        bridge.log_text()
    );
    assert_eq!(world.event_ids().await.len(), 80, "every row once");
    let log = bridge.log_text();
    assert!(
        log.contains("the input folder is gone; waiting for it to come back"),
        "{log}"
    );
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL \
                 AND rows_inserted = 20"
            )
            .await,
        4,
        "every file reconciled once"
    );
    // The archive's rename comes a moment before the count moves.
    let deadline = Instant::now() + LONG;
    loop {
        let metrics_text =
            telemetry::http_get(&format!("http://{metrics}/metrics"), Duration::from_secs(5))
                .await
                .map(|(_, body)| body)
                .unwrap_or_default();
        if metrics_text.contains("pipeline_bridge_files_archived_total 4") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics_text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.assert_every_row_accounted().await;
}

/// The worst form of the removal: the folder taken away again and again while files land in it
/// and the bridge, woken by each, is looking. The bridge never makes it again behind the
/// operator (so no `rm -rf` fails on a folder it refilled), and the folder made for good works.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn an_input_folder_removed_over_and_over_is_never_made_again_by_the_bridge() {
    let world = World::new("folders_churn").await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut bridge = world.bridge(&["--metrics-addr", &metrics]);
    let _consumer = world.consumer(&[]);
    wait_for_readiness(&metrics, 200, "").await;
    for round in 0..30u64 {
        world.drop_file(
            &format!("churn-{round}.csv"),
            &rows(&format!("churn{round}")),
        );
        // Removal at a different point of the bridge's work each round.
        tokio::time::sleep(Duration::from_millis(round * 7 % 50)).await;
        std::fs::remove_dir_all(world.input_dir())
            .unwrap_or_else(|error| panic!("round {round}: rm -rf failed: {error}"));
        let quiet_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < quiet_until {
            assert!(
                !world.input_dir().exists(),
                "round {round}: the bridge made the removed input folder again:\n{}",
                bridge.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_for_readiness(&metrics, 503, "input folder").await;
    world.drop_file("last.csv", &rows("last"));
    wait_for_readiness(&metrics, 200, "").await;
    let deadline = Instant::now() + LONG;
    while !world.event_ids().await.iter().any(|id| id == "last-19") {
        assert!(Instant::now() < deadline, "last.csv did not land");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        bridge.is_running(),
        "the bridge exited:\n{}",
        bridge.log_text()
    );
    // A churn file the bridge claimed is published whole, or not at all if it went before.
    let landed = world.event_ids().await;
    for round in 0..30 {
        let of_round = (0..20)
            .filter(|n| landed.contains(&format!("churn{round}-{n}")))
            .count();
        assert!(
            of_round == 0 || of_round == 20,
            "round {round}: {of_round} of 20 rows landed"
        );
    }
    world.assert_every_row_accounted().await;
}

/// An input folder that can no longer be listed (an operator's `chmod a-r`, a network share gone
/// stale) is waited for, never a reason to exit: the bridge, running as an ordinary user as in
/// its container, says why in `/readyz` and its log, and carries on once it can list again.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn an_input_folder_that_cannot_be_listed_is_waited_for_not_fatal() {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let world = World::new("folders_unreadable").await;
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(world.dir.path(), 0o755);
    for folder in [world.input_dir(), world.archive_dir()] {
        std::fs::create_dir_all(&folder).unwrap();
        std::os::unix::fs::chown(&folder, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let bridge_binary = it_tests::binary_path("file-bridge");
    let mut as_nobody: Vec<String> = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        .map(String::from)
        .into();
    as_nobody.push(bridge_binary.to_str().unwrap().to_owned());
    as_nobody.extend(world.bridge_args(&["--metrics-addr", &metrics]));
    let as_nobody: Vec<&str> = as_nobody.iter().map(String::as_str).collect();
    let mut bridge =
        it_tests::Proc::spawn("/usr/bin/setpriv".into(), &as_nobody, &[], world.dir.path());
    let _consumer = world.consumer(&[]);
    world.drop_file("a.csv", &rows("a"));
    world.wait_for_count(EVENTS, 20, LONG).await;
    wait_for_readiness(&metrics, 200, "").await;

    // Write and search kept, read taken away: the folder cannot be listed.
    mode(&world.input_dir(), 0o300);
    wait_for_readiness(&metrics, 503, "cannot list").await;
    world.drop_file("b.csv", &rows("b"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        bridge.is_running(),
        "the bridge exited:\n{}",
        bridge.log_text()
    );
    mode(&world.input_dir(), 0o755);
    world.wait_for_count(EVENTS, 40, LONG).await;
    wait_for_readiness(&metrics, 200, "").await;
    let log = bridge.log_text();
    assert_eq!(
        log.matches("cannot list the folder").count(),
        1,
        "said once:\n{log}"
    );
    assert!(log.contains("the folder can be listed again"), "{log}");
    world.assert_every_row_accounted().await;
}
