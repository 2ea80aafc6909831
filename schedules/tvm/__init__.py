"""TVM schedules: MetaSchedule design spaces, the tuner, cross compilation and RPC helpers.

Imports ``ea_ops`` (never the other way round); the schedule the runtime applies lives in
``ea_ops.backends.tvm.schedule`` so that ``ea_ops`` runs without this package.
"""
