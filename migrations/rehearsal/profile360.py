"""The Profile 360° view: a partner's record with its onboarding, recruitment and campaign data.

Today it is one query across the four schemas of the shared instance; after
the split, each service's database answers for its part and the parts are put
together by partner id, as the Profile 360° API will do. The rehearsal checks
that both give the same profile for every partner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

# Each part, per partner id: (service schema, key in the profile, query over that schema).
_PARTS: tuple[tuple[str, str, str], ...] = (
    ("public", "partner", """
        SELECT p.id, jsonb_build_object(
          'record', to_jsonb(p),
          'contacts', coalesce((SELECT jsonb_agg(to_jsonb(c) ORDER BY c.id) FROM public.partner_contacts c WHERE c.partner_id = p.id), '[]'),
          'contracts', coalesce((SELECT jsonb_agg(to_jsonb(k) ORDER BY k.id) FROM public.partner_contracts k WHERE k.partner_id = p.id), '[]'))
        FROM public.partners p"""),
    ("onboarding", "onboarding", """
        SELECT o.partner_id, jsonb_agg(jsonb_build_object(
          'process', to_jsonb(o),
          'steps_done', (SELECT count(*) FROM onboarding.onboarding_steps s WHERE s.process_id = o.id AND s.status = 'done'))
          ORDER BY o.id)
        FROM onboarding.onboarding_processes o GROUP BY o.partner_id"""),
    ("recruitment", "job_postings", """
        SELECT j.partner_id, jsonb_agg(jsonb_build_object(
          'posting', to_jsonb(j),
          'applications', (SELECT count(*) FROM recruitment.applications a WHERE a.job_posting_id = j.id))
          ORDER BY j.id)
        FROM recruitment.job_postings j GROUP BY j.partner_id"""),
    ("campaign_management", "campaigns", """
        SELECT cp.partner_id, jsonb_agg(jsonb_build_object(
          'campaign', c.name, 'status', c.status, 'link', to_jsonb(cp),
          'metrics', (SELECT jsonb_build_object('days', count(*), 'impressions', sum(m.impressions))
                      FROM campaign_management.campaign_metrics m WHERE m.campaign_partner_id = cp.id))
          ORDER BY cp.id)
        FROM campaign_management.campaign_partners cp JOIN campaign_management.campaigns c ON c.id = cp.campaign_id
        GROUP BY cp.partner_id"""),
)

# Today's view: the same parts joined inside the shared instance.
_SHARED = sql.SQL("SELECT partner.id, jsonb_build_object({fields}) FROM ({partner}) AS partner(id, part) {joins}")


def shared_profiles(conn: psycopg.Connection) -> dict[str, str]:
    """Every partner's profile computed by one query on the shared instance."""
    (_, first_key, first_query), *others = _PARTS
    fields = [sql.SQL("{}, partner.part").format(sql.Literal(first_key))]
    joins = []
    for i, (_, key, query) in enumerate(others):
        alias = sql.Identifier(f"p{i}")
        fields.append(sql.SQL("{}, coalesce({}.part, '[]')").format(sql.Literal(key), alias))
        joins.append(sql.SQL("LEFT JOIN ({}) AS {}(id, part) ON {}.id = partner.id").format(sql.SQL(query), alias, alias))
    query = _SHARED.format(fields=sql.SQL(", ").join(fields), partner=sql.SQL(first_query), joins=sql.SQL(" ").join(joins))
    return {str(pid): _canonical(profile) for pid, profile in conn.execute(query)}


def split_profiles(connections: Mapping[str, psycopg.Connection]) -> dict[str, str]:
    """Every partner's profile put together from the service databases, keyed by schema."""
    parts: dict[str, dict[str, Any]] = {}
    for schema, key, query in _PARTS:
        for pid, part in connections[schema].execute(query):
            parts.setdefault(str(pid), {})[key] = part
    (_, first_key, _), *others = _PARTS
    return {
        pid: _canonical({first_key: profile[first_key]} | {key: profile.get(key, []) for _, key, _ in others})
        for pid, profile in parts.items()
        if first_key in profile  # parts naming an unknown partner are orphans, not profiles
    }


def schemas() -> list[str]:
    return [schema for schema, _, _ in _PARTS]


def _canonical(profile: Any) -> str:
    return json.dumps(profile, sort_keys=True, ensure_ascii=False)
