"""Primary/replica routing, in parts: the router's settings, the topology of
``DATABASES``, pin scopes (read-your-writes) and replica lag. The router itself
is :class:`multipool.routers.PrimaryReplicaRouter`."""
