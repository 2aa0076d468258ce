"""The GPU simulator: fake NVIDIA libraries and sysfs driven by a topology file.

Real pynvml, torch and cuda.bindings run unmodified against it in a child
process started with ``simulated(topology).env`` (or ``gpuaffinity sim run``).
"""

from gpuaffinity.sim.build import SimulatorError
from gpuaffinity.sim.machine import SimMachine, read_counters, simulated
from gpuaffinity.sim.topology import Topology, TopologyError, list_presets, load_topology

__all__ = ["SimMachine", "SimulatorError", "Topology", "TopologyError", "list_presets", "load_topology",
           "read_counters", "simulated"]
