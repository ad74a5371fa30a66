//! Packet captures of a test's underlay (`tcpdump`, which `cargo xtask setup` installs): what
//! crossed between nodes, to show a flow's payload did not cross in plaintext.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::netns::Netns;

/// `tcpdump` on every port of the underlay bridge, killed on drop.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    pub fn start(fabric: &Netns, file: &Path) -> Capture {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                fabric.name(),
                "tcpdump",
                "-Z",
                "root",
                "-i",
                "any",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                // A larger buffer and TCP only: under load the default buffer dropped packets
                // ("packets dropped by kernel"), and with them the control flow's payload.
                "-B",
                "16384",
                "-w",
            ])
            .arg(file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(file.with_extension("err")).expect("stderr file"))
            .spawn()
            .expect("tcpdump (cargo xtask setup installs it)");
        // tcpdump writes the pcap header once it captures.
        crate::eventually("tcpdump to start", Duration::from_secs(5), || {
            (std::fs::metadata(file).map_or(0, |m| m.len()) > 0).then_some(())
        });
        Capture {
            child,
            file: file.to_owned(),
        }
    }

    /// Stops the capture and returns the raw pcap bytes and tcpdump's reading of them.
    pub fn finish(mut self) -> (Vec<u8>, String) {
        std::thread::sleep(Duration::from_millis(300));
        // SIGTERM: tcpdump writes out what it holds and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let raw = std::fs::read(&self.file).expect("capture file");
        let text = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        (raw, text)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
