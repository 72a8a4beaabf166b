"""The task claims reach the database with their constants in the SQL text, so PostgreSQL never
settles on a generic plan for them (bench/README, "the claims' plans"): a prepared statement with
``status = $1`` on task_files cost 0.1-1 s per call once the statistics knew most rows are not
ready."""

from __future__ import annotations

import sqlalchemy as sa

from bamboo.db import tasks as tasks_db
from bamboo.db.engine import Database
from bamboo.db.rows import with_values_inline
from bamboo.db.schema import tasks
from bamboo.logic.states import TASK_MAKING_JOBS


async def test_claims_send_their_constants_in_the_sql(db: Database) -> None:
    async with db.transaction() as conn:
        assert await tasks_db.claim_generating(conn, sorted(TASK_MAKING_JOBS), 10) == []
        assert await tasks_db.claim_completed(conn, ["running"], 10) == []
        if conn.dialect.name != "postgresql":
            return
        query = sa.text("SELECT statement FROM pg_prepared_statements WHERE statement LIKE '%FROM tasks%'")
        statements = list((await conn.execute(query)).scalars())
    claims = [text for text in statements if "task_files" in text]
    assert len(claims) >= 2, statements
    for text in claims:
        assert "'ready'" in text and "$" not in text, text


async def test_inlined_values_are_quoted_as_sql_literals(db: Database) -> None:
    # Our own constants only, but quoted properly all the same.
    query = sa.select(tasks.c.jediTaskID).where(tasks.c.status.in_(["it's", "running"]), tasks.c.reqID == 7)
    async with db.transaction() as conn:
        assert list((await conn.execute(with_values_inline(query))).scalars()) == []
        compiled = with_values_inline(query).compile(
            dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
        )
    assert "'it''s'" in str(compiled) and "= 7" in str(compiled)
