"""Identifier allocation (jediTaskID, PandaID) from the id_sequences table.

One ``UPDATE ... RETURNING`` reserves a whole block, so a generator inserting a thousand jobs pays
one round trip. On PostgreSQL the row lock serialises allocators of the same sequence until their
transactions end; allocation happens once per batch, so that is cheap.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import id_sequences

JEDI_TASK_ID = "jediTaskID"
PANDA_ID = "PandaID"


async def allocate(conn: AsyncConnection, name: str, count: int = 1) -> list[int]:
    """Reserve ``count`` consecutive identifiers of sequence ``name``; returns them ascending."""
    if count < 1:
        return []
    result = await conn.execute(
        sa.update(id_sequences)
        .where(id_sequences.c.name == name)
        .values(next_value=id_sequences.c.next_value + count)
        .returning(id_sequences.c.next_value)
    )
    end = result.scalar_one()
    return list(range(end - count, end))
