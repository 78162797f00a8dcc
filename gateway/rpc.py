"""The gateway's way to reach services: the process's RPC pool, stored on the app."""
from flask import current_app

from kernel.rpc_pool import RpcPool


def services() -> RpcPool:
    return current_app.extensions["rpc"]
