//! The fleet as routing reads it: nodes in id order, and per task an index of *rungs* — the
//! models that share one manifest (name, size, quality, context, space), smallest first, each
//! with the (node, model) slots that run it. `decide` checks what a model is once per rung
//! and looks at single nodes only within the rungs it considers, so a decision does not walk
//! every model of a large fleet.
//!
//! The registry keeps a snapshot up to date as reports arrive (`FleetSnapshot::with_node`):
//! a report that changes only a node's load swaps that node and keeps the index.

use std::sync::Arc;

use super::types::{ModelView, NodeView, Task};

/// Where one model of one node sits in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub node: u32,
    pub model: u32,
}

/// One rung of a task's ladder: every slot whose model has the same manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rung {
    /// The slots in node order; never empty.
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FleetIndex {
    /// Per task (`Task::index`), smallest rung first.
    ladders: [Vec<Rung>; 3],
}

impl Task {
    fn index(self) -> usize {
        match self {
            Task::Generate => 0,
            Task::Embed => 1,
            Task::Classify => 2,
        }
    }
}

/// What a model is, as far as a rung is concerned: everything but its load and readiness.
fn manifest(m: &ModelView) -> impl PartialEq + '_ {
    (
        (&m.name, m.task, m.parameters, m.size_bytes),
        (
            m.quality.to_bits(),
            m.context_length,
            &m.space,
            m.dimensions,
        ),
    )
}

/// Whether two models are on one rung (the same manifest).
pub(super) fn same_rung(a: &ModelView, b: &ModelView) -> bool {
    manifest(a) == manifest(b)
}

/// The order of rungs: parameters, then bytes, then name (a stable order for equal sizes),
/// then the rest of the manifest so that equal keys are neighbours.
fn order(m: &ModelView) -> impl Ord + '_ {
    (
        m.parameters,
        m.size_bytes,
        &m.name,
        m.quality.to_bits(),
        m.context_length,
        &m.space,
        m.dimensions,
    )
}

impl FleetIndex {
    fn build(nodes: &[Arc<NodeView>]) -> Self {
        let mut all: Vec<(Slot, &ModelView)> = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for (m, model) in node.models.iter().enumerate() {
                all.push((
                    Slot {
                        node: n as u32,
                        model: m as u32,
                    },
                    model,
                ));
            }
        }
        // stable: within a rung, slots stay in node order
        all.sort_by(|a, b| (a.1.task, order(a.1)).cmp(&(b.1.task, order(b.1))));
        let mut index = FleetIndex::default();
        let mut last: Option<&ModelView> = None;
        for (slot, model) in all {
            let ladder = &mut index.ladders[model.task.index()];
            match (last, ladder.last_mut()) {
                (Some(prev), Some(rung)) if manifest(prev) == manifest(model) => {
                    rung.slots.push(slot)
                }
                _ => ladder.push(Rung { slots: vec![slot] }),
            }
            last = Some(model);
        }
        index
    }

    pub(crate) fn ladder(&self, task: Task) -> &[Rung] {
        &self.ladders[task.index()]
    }
}

/// Everything routing reads about the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    nodes: Vec<Arc<NodeView>>,
    index: Arc<FleetIndex>,
}

impl FleetSnapshot {
    /// A snapshot of these nodes, sorted by id.
    pub fn new(nodes: Vec<NodeView>) -> Self {
        let mut nodes: Vec<Arc<NodeView>> = nodes.into_iter().map(Arc::new).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let index = Arc::new(FleetIndex::build(&nodes));
        FleetSnapshot { nodes, index }
    }

    pub fn nodes(&self) -> &[Arc<NodeView>] {
        &self.nodes
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.nodes
            .binary_search_by(|n| n.id.as_str().cmp(id))
            .ok()
            .map(|i| &*self.nodes[i])
    }

    /// This snapshot with `node` in place of the node of its id (or added). The index is
    /// rebuilt only when the node's models changed in more than load and readiness.
    pub fn with_node(&self, node: NodeView) -> Self {
        let mut nodes = self.nodes.clone();
        let same_models = match nodes.binary_search_by(|n| n.id.cmp(&node.id)) {
            Ok(i) => {
                let old = &nodes[i];
                let same = old.models.len() == node.models.len()
                    && old
                        .models
                        .iter()
                        .zip(&node.models)
                        .all(|(a, b)| manifest(a) == manifest(b));
                nodes[i] = Arc::new(node);
                same
            }
            Err(i) => {
                nodes.insert(i, Arc::new(node));
                false
            }
        };
        let index = if same_models {
            self.index.clone()
        } else {
            Arc::new(FleetIndex::build(&nodes))
        };
        FleetSnapshot { nodes, index }
    }

    pub(crate) fn index(&self) -> &FleetIndex {
        &self.index
    }

    pub(crate) fn at(&self, s: Slot) -> (&NodeView, &ModelView) {
        let node = &*self.nodes[s.node as usize];
        (node, &node.models[s.model as usize])
    }

    /// A rung's manifest, from its first slot.
    pub(crate) fn model_of(&self, rung: &Rung) -> &ModelView {
        self.at(rung.slots[0]).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, task: Task, parameters: u64) -> ModelView {
        ModelView::idle(name, task, parameters)
    }

    fn node(id: &str, models: Vec<ModelView>) -> NodeView {
        NodeView {
            id: id.into(),
            addr: String::new(),
            live: true,
            models,
        }
    }

    fn rungs(s: &FleetSnapshot, task: Task) -> Vec<(String, Vec<String>)> {
        s.index()
            .ladder(task)
            .iter()
            .map(|r| {
                let name = s.model_of(r).name.clone();
                let nodes = r.slots.iter().map(|&x| s.at(x).0.id.clone()).collect();
                (name, nodes)
            })
            .collect()
    }

    #[test]
    fn rungs_are_smallest_first_with_their_nodes_in_id_order() {
        let s = FleetSnapshot::new(vec![
            node(
                "b",
                vec![
                    model("large", Task::Generate, 9),
                    model("e", Task::Embed, 1),
                ],
            ),
            node(
                "a",
                vec![
                    model("small", Task::Generate, 2),
                    model("large", Task::Generate, 9),
                ],
            ),
        ]);
        assert_eq!(
            rungs(&s, Task::Generate),
            vec![
                ("small".to_string(), vec!["a".to_string()]),
                ("large".to_string(), vec!["a".to_string(), "b".to_string()]),
            ]
        );
        assert_eq!(rungs(&s, Task::Embed).len(), 1);
        assert!(rungs(&s, Task::Classify).is_empty());
    }

    #[test]
    fn a_load_change_keeps_the_index_and_a_new_model_rebuilds_it() {
        let s = FleetSnapshot::new(vec![node("a", vec![model("m", Task::Generate, 2)])]);
        let mut busy = model("m", Task::Generate, 2);
        busy.in_flight = 2;
        let t = s.with_node(node("a", vec![busy]));
        assert!(Arc::ptr_eq(&s.index, &t.index));
        assert_eq!(t.node("a").map(|n| n.models[0].in_flight), Some(2));
        let u = t.with_node(node("c", vec![model("m", Task::Generate, 2)]));
        assert!(!Arc::ptr_eq(&t.index, &u.index));
        assert_eq!(rungs(&u, Task::Generate)[0].1, vec!["a", "c"]);
        // same name, other manifest: another rung
        let mut other = model("m", Task::Generate, 2);
        other.quality = 0.9;
        let v = u.with_node(node("b", vec![other]));
        assert_eq!(rungs(&v, Task::Generate).len(), 2);
    }
}
