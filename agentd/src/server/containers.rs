//! A container's lifecycle: `core.container.create`, `pause`, `resume`, `update`, `stats`,
//! `pids`, `delete`. The mechanisms are the container's own ([`Container`] for storage and
//! teardown, its [`crate::cgroup::Cgroup`] for the rest); these handlers find the container by
//! id in the registry and answer each request with its reply type or `core.container.failed`,
//! also for an unknown id or a `create` of an id that exists. The container's processes start
//! with `core.exec.request` ([`super::process`]).

use msb_protocol::types::{
    ContainerCreate, ContainerCreated, ContainerDelete, ContainerDone, ContainerFailed,
    ContainerPids, ContainerPidsReply, ContainerStats, ContainerUpdate,
};

use super::Server;
use crate::container::Container;
use crate::lock;

impl Server {
    /// `core.container.create`: mounts the storage and creates the cgroup.
    pub(super) fn create(&self, id: u32, c: ContainerCreate) {
        let cid = c.id.clone();
        if lock(&self.containers).contains_key(&cid) {
            return self.out.send(
                id,
                &ContainerFailed {
                    id: cid.clone(),
                    message: format!("container {cid} already exists"),
                },
            );
        }
        match Container::create(c) {
            Ok(container) => {
                lock(&self.containers).insert(cid, container);
                self.out.send(id, &ContainerCreated {});
            }
            Err(e) => self.out.send(
                id,
                &ContainerFailed {
                    id: cid,
                    message: e.to_string(),
                },
            ),
        }
    }

    /// `core.container.pause` (`frozen`) and `core.container.resume`: the cgroup's freezer.
    pub(super) fn freeze(&self, id: u32, cid: String, frozen: bool) {
        let res = lock(&self.containers)
            .get(&cid)
            .map(|c| c.cgroup.freeze(frozen));
        self.done(id, &cid, res);
    }

    /// `core.container.update`: the resources set in the request, others unchanged.
    pub(super) fn update(&self, id: u32, u: ContainerUpdate) {
        let res = lock(&self.containers)
            .get(&u.id)
            .map(|c| c.cgroup.apply(&u.resources));
        self.done(id, &u.id, res);
    }

    /// `core.container.stats`: the cgroup's figures.
    pub(super) fn stats(&self, id: u32, s: ContainerStats) {
        match lock(&self.containers).get(&s.id).map(|c| c.cgroup.stats()) {
            Some(Ok(stats)) => self.out.send(id, &stats),
            Some(Err(e)) => self.out.send(
                id,
                &ContainerFailed {
                    id: s.id,
                    message: format!("stats: {e}"),
                },
            ),
            None => self.out.send(
                id,
                &ContainerFailed {
                    message: format!("no container {}", s.id),
                    id: s.id,
                },
            ),
        }
    }

    /// `core.container.pids`: the processes of the cgroup.
    pub(super) fn pids(&self, id: u32, p: ContainerPids) {
        match lock(&self.containers).get(&p.id).map(|c| c.cgroup.pids()) {
            Some(Ok(pids)) => self.out.send(id, &ContainerPidsReply { pids }),
            Some(Err(e)) => self.out.send(
                id,
                &ContainerFailed {
                    id: p.id,
                    message: format!("pids: {e}"),
                },
            ),
            None => self.out.send(
                id,
                &ContainerFailed {
                    message: format!("no container {}", p.id),
                    id: p.id,
                },
            ),
        }
    }

    /// `core.container.delete`: kills what is left and unmounts the container's root.
    pub(super) fn delete(&self, id: u32, d: ContainerDelete) {
        let taken = lock(&self.containers).remove(&d.id);
        match taken {
            Some(mut c) => {
                c.teardown();
                self.out.send(id, &ContainerDone {});
            }
            None => self.out.send(
                id,
                &ContainerFailed {
                    message: format!("no container {}", d.id),
                    id: d.id,
                },
            ),
        }
    }

    /// `core.container.done` for a container operation that succeeded; `None`: no such
    /// container.
    fn done(&self, id: u32, cid: &str, res: Option<std::io::Result<()>>) {
        match res {
            Some(Ok(())) => self.out.send(id, &ContainerDone {}),
            Some(Err(e)) => self.out.send(
                id,
                &ContainerFailed {
                    id: cid.to_owned(),
                    message: e.to_string(),
                },
            ),
            None => self.out.send(
                id,
                &ContainerFailed {
                    id: cid.to_owned(),
                    message: format!("no container {cid}"),
                },
            ),
        }
    }
}
