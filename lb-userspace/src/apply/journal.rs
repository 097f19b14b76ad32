//! What an apply changed, with what each change replaced, so a failure can put
//! everything back in reverse order.

use std::sync::Arc;

use tokio::sync::watch;

use crate::datapath::{DatapathError, MapWriter, Write};
use crate::route::RouteTable;

enum Undo {
    Write(Write),
    Routes(Arc<RouteTable>),
}

#[derive(Default)]
pub(super) struct Journal(Vec<Undo>);

impl Journal {
    /// Writes `w`; `undo` puts back what it replaced (None: delete the key `w` sets,
    /// which did not exist before).
    pub(super) fn write(
        &mut self,
        maps: &mut impl MapWriter,
        w: Write,
        undo: Option<Write>,
    ) -> Result<(), DatapathError> {
        maps.write(&w)?;
        self.0
            .push(Undo::Write(undo.unwrap_or_else(|| deleting(&w))));
        Ok(())
    }

    /// Publishes `table` to the proxy.
    pub(super) fn publish(
        &mut self,
        routes: &watch::Sender<Arc<RouteTable>>,
        table: Arc<RouteTable>,
    ) {
        self.0.push(Undo::Routes(routes.send_replace(table)));
    }

    /// Undoes everything, newest first; the first failure is returned after trying
    /// the rest.
    pub(super) fn undo(
        self,
        maps: &mut impl MapWriter,
        routes: &watch::Sender<Arc<RouteTable>>,
    ) -> Result<(), DatapathError> {
        let mut first = None;
        for u in self.0.into_iter().rev() {
            match u {
                Undo::Write(w) => {
                    if let Err(e) = maps.write(&w) {
                        first.get_or_insert(e);
                    }
                }
                Undo::Routes(t) => {
                    routes.send_replace(t);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The write that deletes the key `w` sets.
fn deleting(w: &Write) -> Write {
    match w {
        Write::Service(k, _) => Write::Service(*k, None),
        Write::Slot(k, _) => Write::Slot(*k, None),
        Write::Endpoint(k, _) => Write::Endpoint(*k, None),
        Write::ServiceMeta(k, _) => Write::ServiceMeta(*k, None),
        Write::SubsetMeta(k, _) => Write::SubsetMeta(*k, None),
        // Arrays and listeners are always given their undo explicitly.
        other => other.clone(),
    }
}
