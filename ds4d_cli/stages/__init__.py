"""Pipeline stages: each module exposes an options dataclass and ``run(workspace, options)``."""
