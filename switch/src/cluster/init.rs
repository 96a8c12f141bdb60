//! `switch cluster init`: the files for a cluster of replicas on this machine (or, with
//! `--hosts`, on several), ready to start: each replica's certificate for the link between
//! replicas, one certificate the clients trust on every replica, and each replica's
//! configuration listing all of them.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::tls::Fingerprint;

/// What to make.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dir: PathBuf,
    /// One address per replica (all the same for one machine).
    pub hosts: Vec<IpAddr>,
    pub client_port: u16,
    pub replica_port: u16,
    pub http_port: u16,
}

/// One replica's addresses: clients, the other replicas, `/metrics` and `/cluster`.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub client: SocketAddr,
    pub replica: SocketAddr,
    pub http: SocketAddr,
}

impl Plan {
    /// Each replica's addresses: the ports one apart when replicas share a host.
    pub fn addresses(&self) -> anyhow::Result<Vec<Addresses>> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let offset = if self.hosts.iter().filter(|h| *h == host).count() > 1 {
                    i as u16
                } else {
                    0
                };
                let port = |base: u16| {
                    base.checked_add(offset)
                        .map(|p| SocketAddr::new(*host, p))
                        .ok_or_else(|| anyhow::anyhow!("port {base} + {offset} is past 65535"))
                };
                Ok(Addresses {
                    client: port(self.client_port)?,
                    replica: port(self.replica_port)?,
                    http: port(self.http_port)?,
                })
            })
            .collect()
    }
}

/// What was made, for the operator.
#[derive(Debug)]
pub struct Made {
    pub configs: Vec<PathBuf>,
    /// Of the certificate clients pin (`loadgen --fingerprint`).
    pub client_fingerprint: Fingerprint,
    pub client_addresses: Vec<SocketAddr>,
}

struct Node {
    id: u64,
    client: SocketAddr,
    replica: SocketAddr,
    http: SocketAddr,
    fingerprint: Fingerprint,
    dir: PathBuf,
}

fn write_new(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes the cluster's files under `plan.dir`, which must not hold them already.
pub fn init(plan: &Plan) -> anyhow::Result<Made> {
    init_at(&plan.dir, &plan.addresses()?)
}

/// `init` with every replica's addresses given.
pub fn init_at(dir: &Path, addresses: &[Addresses]) -> anyhow::Result<Made> {
    anyhow::ensure!(
        (1..=super::config::MEMBERS_MAX).contains(&addresses.len()),
        "a cluster has 1 to {} replicas",
        super::config::MEMBERS_MAX
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    // One certificate for the clients, the same on every replica: a client pins one
    // fingerprint and follows the leader to any of them.
    let mut names = vec!["localhost".to_string()];
    names.extend(addresses.iter().map(|a| a.client.ip().to_string()));
    names.sort();
    names.dedup();
    let client_cert = rcgen::generate_simple_self_signed(names)?;
    let client_fingerprint = Fingerprint::of(client_cert.cert.der());
    let mut nodes = Vec::new();
    for (i, a) in addresses.iter().enumerate() {
        let id = i as u64 + 1;
        let node_dir = dir.join(format!("node{id}"));
        let tls_dir = node_dir.join("data").join("tls");
        std::fs::create_dir_all(&tls_dir)
            .with_context(|| format!("creating {}", tls_dir.display()))?;
        write_new(
            &tls_dir.join(crate::tls::SELF_SIGNED_CERT_FILE),
            client_cert.cert.der(),
        )?;
        write_new(
            &tls_dir.join("server-key.der"),
            &client_cert.signing_key.serialize_der(),
        )?;
        write_new(
            &node_dir
                .join("data")
                .join(crate::server::replication::FOUNDING_FILE),
            b"This replica founds its cluster at its first start (switch cluster init).\n",
        )?;
        let replica = rcgen::generate_simple_self_signed(vec![format!("replica-{id}")])?;
        write_new(&node_dir.join("replica.pem"), replica.cert.pem().as_bytes())?;
        write_new(
            &node_dir.join("replica.key"),
            replica.signing_key.serialize_pem().as_bytes(),
        )?;
        nodes.push(Node {
            id,
            client: a.client,
            replica: a.replica,
            http: a.http,
            fingerprint: Fingerprint::of(replica.cert.der()),
            dir: node_dir,
        });
    }
    let mut configs = Vec::new();
    for node in &nodes {
        let path = dir.join(format!("node{}.toml", node.id));
        write_new(&path, config_text(node, &nodes).as_bytes())?;
        configs.push(path);
    }
    Ok(Made {
        configs,
        client_fingerprint,
        client_addresses: nodes.iter().map(|n| n.client).collect(),
    })
}

fn config_text(node: &Node, all: &[Node]) -> String {
    let mut t = String::new();
    let _ = write!(
        t,
        "# Replica {id} of a cluster of {n}, written by `switch cluster init`.\n\
         # Start it with: switch serve --config {config}\n\n\
         [server]\n\
         listen = \"{client}\"\n\
         data_dir = {data:?}\n\n\
         [metrics]\n\
         listen = \"{http}\"\n\n\
         [tls]\n\
         # Every replica has the same certificate for clients (in data_dir/tls), so a client\n\
         # pins one fingerprint for the whole cluster.\n\
         mode = \"self-signed\"\n\
         anonymous_participant = 1\n\
         anonymous_is_admin = true\n\n\
         # The route loadgen's defaults use (card prefix 62, issuer 2).\n\
         [[routes]]\n\
         prefix = \"62\"\n\
         issuer = 2\n\n\
         [cluster]\n\
         id = {id}\n\
         replica_listen = \"{replica}\"\n\
         cert_file = {cert:?}\n\
         key_file = {key:?}\n",
        id = node.id,
        n = all.len(),
        config = node.dir.with_extension("toml").display(),
        client = node.client,
        data = node.dir.join("data").display().to_string(),
        http = node.http,
        replica = node.replica,
        cert = node.dir.join("replica.pem").display().to_string(),
        key = node.dir.join("replica.key").display().to_string(),
    );
    for m in all {
        let _ = write!(
            t,
            "\n[[cluster.members]]\n\
             id = {}\n\
             replica_address = \"{}\"\n\
             client_address = \"{}\"\n\
             http_address = \"{}\"\n\
             fingerprint_sha256 = \"{}\"\n",
            m.id, m.replica, m.client, m.http, m.fingerprint
        );
    }
    t
}

/// What to do next, for the operator.
pub fn instructions(made: &Made) -> String {
    let mut t =
        String::from("Wrote a cluster of replicas. Start each (on its own host, or here):\n\n");
    for c in &made.configs {
        let _ = writeln!(t, "  switch serve --config {}", c.display());
    }
    let targets: Vec<String> = made
        .client_addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    let _ = write!(
        t,
        "\nClients pin one fingerprint for all of them and follow the leader:\n\n  \
         loadgen --target {} --fingerprint {} constant --rate 2000 --duration 10\n\n\
         See them: switch cluster status --config {}\n",
        targets.join(","),
        made.client_fingerprint,
        made.configs
            .first()
            .map(|c| c.display().to_string())
            .unwrap_or_default(),
    );
    t
}

/// What `add_member` made.
#[derive(Debug)]
pub struct Added {
    /// The new member's configuration.
    pub config: PathBuf,
    pub id: u64,
    /// Its `[[cluster.members]]` entry, for every other member's configuration.
    pub entry: String,
}

/// Writes the files of a new member `id` with `addresses` under `dir`, from the configuration
/// of a member of the cluster it joins (`from`): its own certificate for the link, the
/// clients' certificate of the others (a self-signed cluster's), and a configuration like
/// `from`'s with its own addresses, `join = true`, and itself among the members.
pub fn add_member(from: &Path, dir: &Path, id: u64, addresses: Addresses) -> anyhow::Result<Added> {
    let config = crate::config::Config::load(from)?;
    let Some(cluster) = &config.cluster else {
        anyhow::bail!("{} has no [cluster]", from.display());
    };
    anyhow::ensure!(id != 0, "0 is not a member id");
    anyhow::ensure!(
        !cluster.members.iter().any(|m| m.id == id),
        "member {id} is in {} already: a new member takes an id never used before (a lost \
         member's disk is gone with its id)",
        from.display()
    );
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("reading {} as TOML", from.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let node_dir = dir.join(format!("node{id}"));
    let data_dir = node_dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    if config.tls.mode == crate::config::TlsMode::SelfSigned {
        // The same certificate for clients as every other member's.
        let (from_tls, to_tls) = (config.server.data_dir.join("tls"), data_dir.join("tls"));
        std::fs::create_dir_all(&to_tls)
            .with_context(|| format!("creating {}", to_tls.display()))?;
        for name in [crate::tls::SELF_SIGNED_CERT_FILE, "server-key.der"] {
            let bytes = std::fs::read(from_tls.join(name)).with_context(|| {
                format!(
                    "reading {} (the clients' certificate every member shares)",
                    from_tls.join(name).display()
                )
            })?;
            write_new(&to_tls.join(name), &bytes)?;
        }
    }
    let replica = rcgen::generate_simple_self_signed(vec![format!("replica-{id}")])?;
    let (cert, key) = (node_dir.join("replica.pem"), node_dir.join("replica.key"));
    write_new(&cert, replica.cert.pem().as_bytes())?;
    write_new(&key, replica.signing_key.serialize_pem().as_bytes())?;
    let fingerprint = Fingerprint::of(replica.cert.der());

    let section = |table: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match table.remove(name) {
            Some(toml::Value::Table(t)) => Ok(t),
            None => Ok(toml::Table::new()),
            Some(_) => anyhow::bail!("[{name}] is not a table"),
        }
    };
    let text_of = |p: &Path| toml::Value::String(p.display().to_string());
    let mut server = section(&mut table, "server")?;
    server.insert("listen".into(), addresses.client.to_string().into());
    server.insert("data_dir".into(), text_of(&data_dir));
    table.insert("server".into(), server.into());
    let mut metrics = section(&mut table, "metrics")?;
    metrics.insert("listen".into(), addresses.http.to_string().into());
    table.insert("metrics".into(), metrics.into());
    let mut c = section(&mut table, "cluster")?;
    c.insert("id".into(), toml::Value::Integer(i64::try_from(id)?));
    c.insert(
        "replica_listen".into(),
        addresses.replica.to_string().into(),
    );
    c.insert("cert_file".into(), text_of(&cert));
    c.insert("key_file".into(), text_of(&key));
    c.insert("join".into(), true.into());
    let mut entry = toml::Table::new();
    entry.insert("id".into(), toml::Value::Integer(i64::try_from(id)?));
    entry.insert(
        "replica_address".into(),
        addresses.replica.to_string().into(),
    );
    entry.insert("client_address".into(), addresses.client.to_string().into());
    entry.insert("http_address".into(), addresses.http.to_string().into());
    entry.insert("fingerprint_sha256".into(), fingerprint.to_string().into());
    match c.get_mut("members") {
        Some(toml::Value::Array(members)) => members.push(entry.clone().into()),
        _ => anyhow::bail!("[cluster] has no members"),
    }
    table.insert("cluster".into(), c.into());
    let config_path = dir.join(format!("node{id}.toml"));
    let body = toml::to_string(&table).context("writing the configuration")?;
    let header = format!(
        "# Member {id}, joining the cluster of {from}; written by `switch cluster add-member`.\n\
         # Start it with: switch serve --config {config}\n\n",
        from = from.display(),
        config = config_path.display()
    );
    write_new(&config_path, format!("{header}{body}").as_bytes())?;
    // The new configuration must be one the switch starts from.
    crate::config::Config::load(&config_path)?;
    let mut members = toml::Table::new();
    members.insert(
        "cluster".into(),
        toml::Value::Table(toml::Table::from_iter([(
            "members".to_string(),
            toml::Value::Array(vec![entry.into()]),
        )])),
    );
    let entry = toml::to_string(&members).context("writing the member's entry")?;
    Ok(Added {
        config: config_path,
        id,
        entry,
    })
}

/// What to do next once a member's files are made.
pub fn add_instructions(added: &Added) -> String {
    format!(
        "Wrote member {id}: {config}\n\n\
         1. Append its entry to every member's configuration, and reload each (kill -HUP):\n\n\
         {entry}\n\
         2. Start it (it waits to be added):  switch serve --config {config}\n\
         3. Add it (and remove the member it replaces, if any):\n\n   \
         switch cluster change --config {config} --add {id} [--remove ID]\n",
        id = added.id,
        config = added.config.display(),
        entry = added.entry,
    )
}
