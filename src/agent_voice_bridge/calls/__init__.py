"""A call's life: running it (``session``), the live calls (``registry``), moving it to a fallback
(``handover``) and writing its records (``records``). ``storage/`` below only persists; the server above
asks a :class:`~agent_voice_bridge.chain_source.ChainSource` for the chain and hands it to ``session``."""
