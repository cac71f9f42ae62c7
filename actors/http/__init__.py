"""The HTTP front actor: the Quart app (``app``, ``stream``) and the server that runs it
(``server``), kept apart the way Hypercorn keeps its protocol from its I/O."""
