//! What cnilab's own CNI plugins share (calico's, weave-net, aws-cni): the
//! CNI protocol of a plugin binary (SPEC.md): the configuration on stdin,
//! the command in CNI_COMMAND, the result on stdout, or an error object
//! with a code and message and exit status 1.

use std::io::{Read, Write};

use serde_json::{Value, json};

/// A CNI error: its code (4 invalid environment variables, 7 invalid
/// network config, 11 try again later, 999 other) and message.
#[derive(Debug)]
pub struct Failure {
    /// The error code.
    pub code: i64,
    /// What went wrong.
    pub msg: String,
}

impl Failure {
    /// An error with `code`.
    pub fn new(code: i64, msg: impl Into<String>) -> Failure {
        Failure { code, msg: msg.into() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(999, format!("{e:#}"))
    }
}

/// One invocation: the configuration as read, its bytes, its cniVersion
/// (`default_version` when it names none) and CNI_COMMAND.
pub struct Request {
    /// The configuration (Null when stdin is not JSON).
    pub conf: Value,
    /// Stdin as read.
    pub stdin: Vec<u8>,
    /// The cniVersion errors and results are given in.
    pub version: String,
    /// CNI_COMMAND.
    pub command: String,
}

/// Reads stdin and the command.
pub fn request(default_version: &str) -> Request {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let conf: Value = serde_json::from_slice(&stdin).unwrap_or(Value::Null);
    let version = conf["cniVersion"].as_str().unwrap_or(default_version).to_string();
    Request {
        conf,
        stdin,
        version,
        command: std::env::var("CNI_COMMAND").unwrap_or_default(),
    }
}

/// The error for a CNI_COMMAND the plugin does not know.
pub fn unknown_command(command: &str) -> Failure {
    Failure::new(4, format!("unknown CNI_COMMAND: {command:?}"))
}

/// A required environment variable, or the error libcni's plugins give.
pub fn env(name: &str) -> Result<String, Failure> {
    std::env::var(name).map_err(|_| Failure::new(4, format!("required env variables [{name}] missing")))
}

/// A current-thread tokio runtime for one invocation.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Prints the result (exit 0) or the error object (exit 1).
pub fn finish(version: &str, outcome: Result<String, Failure>) -> ! {
    match outcome {
        Ok(out) => {
            print!("{out}");
            let _ = std::io::stdout().flush();
            std::process::exit(0)
        }
        Err(f) => {
            println!("{}", json!({ "cniVersion": version, "code": f.code, "msg": f.msg }));
            std::process::exit(1)
        }
    }
}
