"""/v1/templates."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import template_registry
from services.api.deps import PrincipalDep, SessionDep
from services.api.schemas import Page, TemplateDetail, TemplateSummary

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.get("")
async def list_templates(principal: PrincipalDep, session: SessionDep) -> Page[TemplateSummary]:
    return Page(items=await template_registry.list_templates(session), next_cursor=None)


@router.get("/{name}")
async def get_template(name: str, principal: PrincipalDep, session: SessionDep) -> TemplateDetail:
    return await template_registry.get_template(session, name)
