"""rt_lab: instruction following without instruction tuning, as one Hydra-composed pipeline."""

from rt_lab.config import register as _register_schemas
from rt_lab.resolvers import register as _register_resolvers

_register_resolvers()
_register_schemas()
