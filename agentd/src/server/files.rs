//! `core.fs.*`: agentd serves writes only (the host copies small files into a container before it
//! starts). A `write` request opens the file, `core.fs.data` chunks follow on the same id, and
//! the empty chunk ends the write and is answered with `core.fs.response`. The resolution that
//! keeps paths inside the container's root is [`crate::fs`]'s; this module keeps the open
//! writes between frames. Every other operation is answered "not supported".

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

use msb_protocol::types::{FsData, FsOp, FsRequest, FsResponse};

use super::Server;
use crate::lock;

/// Open write sessions by id: data frames append until an empty one.
pub(super) type Writes = HashMap<u32, File>;

impl Server {
    /// Starts a write (the only `core.fs` operation agentd serves); others are refused.
    pub(super) fn fs_request(&mut self, id: u32, r: FsRequest) {
        let FsOp::Write { path, mode } = r.op else {
            return self.fs_reply(id, Err(format!("{:?} is not supported by agentd", r.op)));
        };
        let root = match &r.container {
            Some(cid) => match lock(&self.containers).get(cid) {
                Some(c) => c.rootfs.clone(),
                None => return self.fs_reply(id, Err(format!("no container {cid}"))),
            },
            None => PathBuf::from("/"),
        };
        match crate::fs::create_in_root(&root, &path, mode.unwrap_or(0o644)) {
            Ok(file) => {
                self.writes.insert(id, file);
            }
            Err(e) => self.fs_reply(id, Err(format!("create {path}: {e}"))),
        }
    }

    /// A chunk of an open write; the empty chunk ends it. Chunks of a write that already
    /// failed (and was answered) are dropped.
    pub(super) fn fs_data(&mut self, id: u32, d: FsData) {
        use std::io::Write;
        let Some(file) = self.writes.get_mut(&id) else {
            return;
        };
        if d.data.is_empty() {
            self.writes.remove(&id);
            return self.fs_reply(id, Ok(()));
        }
        if let Err(e) = file.write_all(&d.data) {
            self.writes.remove(&id);
            self.fs_reply(id, Err(format!("write: {e}")));
        }
    }

    fn fs_reply(&self, id: u32, result: Result<(), String>) {
        let reply = match result {
            Ok(()) => FsResponse {
                ok: true,
                ..FsResponse::default()
            },
            Err(e) => FsResponse {
                ok: false,
                error: Some(e),
                ..FsResponse::default()
            },
        };
        self.out.send(id, &reply);
    }
}
