//! The first-packet handshake with weftd (NetworkPolicy). weftd's table drops every address of
//! the node's pod CIDRs that it does not know (fail closed), so a new pod is never open
//! contrary to its policies; this tells weftd the pod's namespace, name and addresses at ADD,
//! so that weftd classifies it before ADD returns instead of when the pod's IP reaches it
//! through the API. Best effort: without an answer in time (weftd down or busy) ADD still
//! succeeds, and the pod stays closed until weftd knows it.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use weft_cni::Env;

/// How long ADD waits for weftd to have the pod in its table.
const WAIT: Duration = Duration::from_secs(3);

pub fn announce(socket: &Path, env: &Env, ips: &[IpAddr]) {
    let (Some(namespace), Some(name)) = (
        env.args.get("K8S_POD_NAMESPACE"),
        env.args.get("K8S_POD_NAME"),
    ) else {
        return; // not a Kubernetes pod: no policy selects it
    };
    let answer = (|| -> std::io::Result<String> {
        let mut s = UnixStream::connect(socket)?;
        s.set_write_timeout(Some(WAIT))?;
        s.set_read_timeout(Some(WAIT))?;
        let req = serde_json::json!({ "namespace": namespace, "name": name, "ips": ips });
        writeln!(s, "{req}")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim().to_string())
    })();
    match answer {
        Ok(a) if a == "ok" => {}
        // Logs go to stderr (stdout is the result); the runtime keeps them.
        Ok(a) => eprintln!("weft: policy handshake for {namespace}/{name}: {a}"),
        Err(e) => eprintln!(
            "weft: policy handshake for {namespace}/{name} on {}: {e}; the pod stays closed until weftd knows it",
            socket.display()
        ),
    }
}
