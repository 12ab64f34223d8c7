//! weft-lab: network namespaces playing nodes, pods, an underlay and the outside world, with
//! the real `weft` plugin exec'd the way a runtime execs it. Used by the `weft-lab` binary (the
//! demo), by the end-to-end tests and by the benchmarks.

pub mod ns;
pub mod plugin;
pub mod probe;

pub use ns::Netns;
pub use plugin::{PluginOutput, PluginRunner};
