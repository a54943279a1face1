//! A real PostgreSQL server for the shared-ledger tests: one cluster per test, in a
//! temporary directory (stopped and removed when it is dropped), listening on a unix socket
//! inside it only (no TCP port to collide on), with `fsync` off (a killed process keeps the
//! page cache; only an OS crash would need it). `initdb` refuses to run as root, and tests run as root in CI: the cluster then
//! belongs to the `postgres` user when there is one, else `nobody`.
//!
//! The server comes from `build/postgres/bin` (`tools/fetch_postgres.sh` unpacks one there
//! on a machine without one), `pg_config --bindir` or Debian's `/usr/lib/postgresql/*/bin`. Under `make test`
//! (EDGEWISE_TEST_POSTGRES=required) a missing server fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
    next_db: AtomicUsize,
    /// TLS on TCP 127.0.0.1 at this port, clients authenticated by certificate only.
    tls_port: Option<u16>,
}

/// The files a TLS client of [`Postgres::start_tls`] needs: the CA that signed the server's
/// certificate, and a client certificate and key for the user `edgewise`.
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`, if any.
fn bindir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fetched = root.join("build/postgres/bin");
    let mut candidates = vec![fetched];
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

/// Whether the tests must have a server (under `make test`) rather than skip.
fn required() -> bool {
    std::env::var("EDGEWISE_TEST_POSTGRES").as_deref() == Ok("required")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    /// A running server, or `None` (with why on stderr) when there is none to run and the
    /// tests may skip.
    pub fn start() -> Option<Postgres> {
        Self::start_with(false)
    }

    /// A server that takes TLS connections on 127.0.0.1 only, authenticating clients by
    /// certificate (`hostssl … cert`; plaintext TCP is refused), with the files a client
    /// needs (in a directory of their own).
    pub fn start_tls() -> Option<(Postgres, ClientFiles, tempfile::TempDir)> {
        let pg = Self::start_with(true)?;
        let client = tempfile::tempdir().unwrap();
        let files = ClientFiles {
            ca: client.path().join("ca.pem"),
            cert: client.path().join("client.pem"),
            key: client.path().join("client.key"),
        };
        std::fs::copy(pg.dir.path().join("ca.pem"), &files.ca).unwrap();
        std::fs::rename(pg.dir.path().join("client.pem"), &files.cert).unwrap();
        std::fs::rename(pg.dir.path().join("client.key"), &files.key).unwrap();
        Some((pg, files, client))
    }

    /// The TCP port of a TLS server.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    fn start_with(tls: bool) -> Option<Postgres> {
        let Some(bin) = bindir() else {
            assert!(
                !required(),
                "no PostgreSQL server found (pg_config, /usr/lib/postgresql/*/bin, build/postgres/bin): run tools/fetch_postgres.sh"
            );
            eprintln!("skipping: no PostgreSQL server (run tools/fetch_postgres.sh)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("edgewise-pg-")
            .tempdir()
            .unwrap();
        let user = is_root().then(|| {
            let ok = |u: &str| {
                Command::new("id")
                    .arg("-u")
                    .arg(u)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if ok("postgres") { "postgres" } else { "nobody" }.to_string()
        });
        let tls_port = tls.then(|| {
            write_certificates(dir.path());
            // a free port, released for the server (PostgreSQL takes no port 0)
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        if let Some(u) = &user {
            let st = Command::new("chown")
                .arg("-R")
                .arg(u)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown {u} {}", dir.path().display());
        }
        let pg = Postgres {
            dir,
            bin,
            user,
            next_db: AtomicUsize::new(0),
            tls_port,
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "edgewise",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        if pg.tls_port.is_some() {
            // the unix socket for the harness itself; TCP only over TLS with a certificate
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
            )
            .unwrap();
        }
        pg.start_again();
        Some(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut c = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // a server unpacked by tools/fetch_postgres.sh finds its libpq beside it
        let libs = self.bin.join("../../../x86_64-linux-gnu");
        if self
            .bin
            .starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/postgres"))
            && libs.is_dir()
        {
            c.env("LD_LIBRARY_PATH", libs);
        }
        c
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = self.command(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {}: {}{}\n{}",
            exe.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Connection parameters for database `db` (over the unix socket).
    pub fn params(&self, db: &str) -> String {
        let port = self
            .tls_port
            .map_or(String::new(), |p| format!(" port={p}"));
        format!(
            "host={} user=edgewise dbname={db}{port}",
            self.dir.path().display()
        )
    }

    /// A new, empty database of its own for one test: its connection parameters.
    pub async fn database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{n}");
        let (client, conn) =
            tokio_postgres::connect(&self.params("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        self.params(&name)
    }

    /// Stops the server at once (as a crash would) and starts it again on the same data.
    pub fn restart_immediate(&self) {
        self.stop_immediate();
        self.start_again();
    }

    /// Stops the server at once, as a crash would.
    pub fn stop_immediate(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the stopped server again on the same data (and socket).
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let d = self.dir.path().display();
        let mut opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{d}' -c fsync=off -c max_connections=200"
        );
        if let Some(port) = self.tls_port {
            opts = format!(
                "-c listen_addresses='127.0.0.1' -p {port} -c unix_socket_directories='{d}' -c fsync=off \
                 -c ssl=on -c ssl_cert_file='{d}/server.pem' -c ssl_key_file='{d}/server.key' -c ssl_ca_file='{d}/ca.pem'"
            );
        }
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                self.dir.path().join("log").to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let args = ["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"];
        let _ = self.command("pg_ctl").args(args).output();
    }
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate for the
/// user `edgewise` (its common name), as PEM files in `dir`.
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Edgewise test database CA");
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
    let leaf = |names: Vec<String>, cn: &str, cert: &str, key: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &issuer).unwrap();
        std::fs::write(dir.join(cert), c.pem()).unwrap();
        std::fs::write(dir.join(key), k.serialize_pem()).unwrap();
        // PostgreSQL refuses a key others can read
        std::fs::set_permissions(
            dir.join(key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    };
    leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        "server.pem",
        "server.key",
    );
    leaf(Vec::new(), "edgewise", "client.pem", "client.key");
}

/// What a [`Proxy`] does with the bytes between the gateway and the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Passes them both ways.
    Up,
    /// Accepts connections and drops every byte both ways, answering nothing: a partition
    /// that a peer notices only by its own timeouts.
    Blackhole,
    /// Closes every connection at once (new and open ones).
    Reset,
}

/// A TCP proxy on 127.0.0.1 (port 0) in front of the server's unix socket, to cut one
/// gateway off the database while others keep it.
pub struct Proxy {
    pub port: u16,
    link: tokio::sync::watch::Sender<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(pg: &Postgres) -> Proxy {
        let socket = pg.dir.path().join(".s.PGSQL.5432");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = tokio::sync::watch::Sender::new(Link::Up);
        let watch = link.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (socket, mut state) = (socket.clone(), watch.subscribe());
                tokio::spawn(async move {
                    if *state.borrow() == Link::Reset {
                        return;
                    }
                    let Ok(unix) = tokio::net::UnixStream::connect(&socket).await else {
                        return;
                    };
                    let (mut tr, mut tw) = tcp.into_split();
                    let (mut ur, mut uw) = unix.into_split();
                    let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    loop {
                        tokio::select! {
                            n = tr.read(&mut a) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) if *state.borrow() == Link::Up => {
                                    if uw.write_all(&a[..n]).await.is_err() { return; }
                                }
                                Ok(_) => {}
                            },
                            n = ur.read(&mut b) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) if *state.borrow() == Link::Up => {
                                    if tw.write_all(&b[..n]).await.is_err() { return; }
                                }
                                Ok(_) => {}
                            },
                            changed = state.changed() => {
                                if changed.is_err() || *state.borrow() == Link::Reset {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy { port, link, task }
    }

    /// Connection parameters for database `db` through the proxy.
    pub fn params(&self, db_params: &str) -> String {
        let db = db_params
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("dbname="))
            .unwrap_or("postgres");
        format!(
            "host=127.0.0.1 port={} user=edgewise dbname={db}",
            self.port
        )
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
