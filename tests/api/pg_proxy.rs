//! A proxy in front of the real PostgreSQL that can lose the answer to a COMMIT: the transaction
//! commits, and the client sees its connection drop before it learns so. That is the "unknown
//! outcome" a network or a failover gives, which nothing else here can make on demand.
//!
//! The proxy speaks just enough of the wire protocol to follow each connection: it declines TLS
//! (`N` to an SSLRequest, so it can read the messages), remembers the SQL of every prepared
//! statement (sqlx caches them by name, so a statement's text is sent once per connection), and
//! notes whether the transaction open on the connection has run a statement containing the
//! trap's fragment. When that transaction's `COMMIT` goes through, the server's answer is read to
//! its end (`ReadyForQuery`) and dropped, and both sockets are closed. A trap may instead lose the
//! COMMIT itself on its way (the server gets a `ROLLBACK` in its place): the client sees the same
//! dropped connection, and nothing was committed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use secrecy::ExposeSecret;

use crate::helpers::TestApp;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// What becomes of a trapped transaction's COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// It commits; its answer is lost.
    Answer,
    /// It never reaches the server, which rolls the transaction back.
    Commit,
}

#[derive(Default)]
struct Shared {
    /// The fragment of SQL whose transaction's COMMIT (or its answer) is lost next, how many
    /// more times, and which of the two.
    trap: Mutex<Option<(String, usize, Lost)>>,
    /// How many COMMITs or their answers were lost.
    sprung: AtomicUsize,
}

pub struct PgProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl PgProxy {
    /// A proxy to `upstream` (`host:port` of the real server).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (shared, upstream) = (Arc::clone(&accepting), upstream.clone());
                tokio::spawn(async move {
                    // A connection that breaks is the client's to notice.
                    let _ = serve(client, &upstream, shared).await;
                });
            }
        });
        Self { addr, shared }
    }

    /// `url` (a `postgres://` URL of the real server) pointed at this proxy.
    pub fn url(&self, url: &str) -> String {
        let mut url = reqwest::Url::parse(url).expect("a database URL");
        url.set_host(Some(&self.addr.ip().to_string()))
            .expect("a host");
        url.set_port(Some(self.addr.port())).expect("a port");
        url.to_string()
    }

    /// The answer to the COMMIT of each of the next `times` transactions that run a statement
    /// containing `fragment` is lost.
    pub fn lose_commit_answers(&self, fragment: &str, times: usize) {
        *self.shared.trap.lock().unwrap() = Some((fragment.to_owned(), times, Lost::Answer));
    }

    /// The COMMIT of each of the next `times` transactions that run a statement containing
    /// `fragment` is lost on its way: they are rolled back, and their connection drops.
    pub fn lose_commits(&self, fragment: &str, times: usize) {
        *self.shared.trap.lock().unwrap() = Some((fragment.to_owned(), times, Lost::Commit));
    }

    pub fn lost(&self) -> usize {
        self.shared.sprung.load(Ordering::SeqCst)
    }
}

/// The app with every PostgreSQL connection through a [`PgProxy`].
pub async fn proxied_app() -> (TestApp, PgProxy) {
    let server = reqwest::Url::parse(&crate::helpers::postgres_server_url()).unwrap();
    let upstream = format!(
        "{}:{}",
        server.host_str().unwrap(),
        server.port().unwrap_or(5432)
    );
    let proxy = PgProxy::start(upstream).await;
    let app = TestApp::spawn_with(
        |settings| {
            let url = proxy.url(settings.database.url.expose_secret());
            settings.database.url = url.into();
        },
        |_| Vec::new(),
    )
    .await;
    (app, proxy)
}

async fn serve(mut client: TcpStream, upstream: &str, shared: Arc<Shared>) -> std::io::Result<()> {
    // The startup: declines TLS and GSS encryption until the client sends its StartupMessage.
    let startup = loop {
        let len = client.read_u32().await?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        client.read_exact(&mut body).await?;
        let code = body
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if matches!(code, Some(SSL_REQUEST | GSSENC_REQUEST)) {
            client.write_all(b"N").await?;
            continue;
        }
        let mut message = len.to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        break message;
    };
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&startup).await?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let losing = Arc::new(AtomicBool::new(false));
    let upward = tokio::spawn(client_to_server(
        client_read,
        server_write,
        Arc::clone(&shared),
        Arc::clone(&losing),
    ));
    let downward = server_to_client(server_read, client_write, &shared, &losing).await;
    upward.abort();
    downward
}

/// One message: its type byte and its body (after the length).
async fn read_message(from: &mut OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = from.read_u8().await?;
    let len = from.read_u32().await?;
    let mut body = vec![0; (len as usize).saturating_sub(4)];
    from.read_exact(&mut body).await?;
    Ok((kind, body))
}

async fn write_message(to: &mut OwnedWriteHalf, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(body.len() + 5);
    message.push(kind);
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(body);
    to.write_all(&message).await
}

/// The NUL-terminated strings at the start of `body`.
fn strings(body: &[u8], n: usize) -> Vec<String> {
    body.split(|b| *b == 0)
        .take(n)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

async fn client_to_server(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    shared: Arc<Shared>,
    losing: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut statements: HashMap<String, String> = HashMap::new();
    // The SQL run by the transaction open on this connection.
    let mut ran: Vec<String> = Vec::new();
    loop {
        let (kind, mut body) = read_message(&mut client).await?;
        match kind {
            b'P' => {
                let parsed = strings(&body, 2);
                if let [name, query] = parsed.as_slice() {
                    statements.insert(name.clone(), query.clone());
                    ran.push(query.clone());
                }
            }
            b'B' => {
                let bound = strings(&body, 2);
                if let Some(query) = bound.get(1).and_then(|name| statements.get(name)) {
                    ran.push(query.clone());
                }
            }
            b'Q' => {
                let query = strings(&body, 1).pop().unwrap_or_default();
                let verb = query.trim().to_ascii_uppercase();
                if verb.starts_with("BEGIN") {
                    ran.clear();
                } else if verb.starts_with("COMMIT") {
                    let mut trap = shared.trap.lock().unwrap();
                    if let Some((fragment, times, lost)) = trap.as_mut()
                        && *times > 0
                        && ran.iter().any(|sql| sql.contains(fragment.as_str()))
                    {
                        *times -= 1;
                        if *lost == Lost::Commit {
                            body = b"ROLLBACK\0".to_vec();
                        }
                        losing.store(true, Ordering::SeqCst);
                    }
                    ran.clear();
                } else {
                    ran.push(query);
                }
            }
            _ => {}
        }
        write_message(&mut server, kind, &body).await?;
        if kind == b'X' || losing.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

async fn server_to_client(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    shared: &Shared,
    losing: &AtomicBool,
) -> std::io::Result<()> {
    loop {
        let (kind, body) = read_message(&mut server).await?;
        if losing.load(Ordering::SeqCst) {
            // The COMMIT's (or its stand-in's) answer: read to its end, so the server is done
            // with the transaction, then dropped.
            if kind == b'Z' {
                shared.sprung.fetch_add(1, Ordering::SeqCst);
                client.shutdown().await?;
                return Ok(());
            }
            continue;
        }
        write_message(&mut client, kind, &body).await?;
    }
}
