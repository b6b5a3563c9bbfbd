"""Dependencies the routes declare: the gateway, and who is asking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import Principal
from .gateway import Gateway

BEARER = HTTPBearer(auto_error=False, description="an API key (when the server requires them)")


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Principal:
    """Who is asking: the owner of the API key sent (or, with auth off, the anonymous admin)."""
    keys = get_gateway(request).keys
    return keys.authenticate(f"Bearer {credentials.credentials}" if credentials else None)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
Who = Annotated[Principal, Depends(principal)]
