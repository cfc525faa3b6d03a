"""What every channel's inbound path shares: threading by references (same customer only),
provider texts that never stall a poller, attachments with any file name."""

from __future__ import annotations

from typing import Any

from frankly.channels import service as channel_service
from frankly.channels.base import InboundAttachment, InboundMessage
from frankly.db import commit
from tests.factories import make_desk

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def _ingest(db: Any, inbound: InboundMessage) -> Any:
    async with db.sessionmaker() as session:
        result = await channel_service.ingest_inbound(session, channel="email", inbound=inbound)
        await commit(session)
        return result


def _mail(mid: str, sender: str, refs: list[str], root: str | None = None) -> InboundMessage:
    return InboundMessage(
        conversation_external_id=root or mid,
        message_external_id=mid,
        text=f"mail {mid}",
        contact_external_id=sender,
        thread_refs=refs,
    )


class TestThreading:
    async def test_only_the_same_customer_joins_a_thread_by_reference(self, db: Any) -> None:
        first = await _ingest(db, _mail("<a1@x>", "alice@example.org", []))
        # Alice answers with a new root in References (some clients do): same conversation.
        again = await _ingest(
            db, _mail("<a2@x>", "alice@example.org", ["<other@x>", "<a1@x>"], root="<other@x>")
        )
        assert again.conversation.id == first.conversation.id
        # Mallory, who learned the Message-ID (a CC), gets her own conversation.
        intruder = await _ingest(db, _mail("<m1@x>", "mallory@example.org", ["<a1@x>"]))
        assert intruder.conversation.id != first.conversation.id


class TestProviderText:
    async def test_a_huge_or_blank_provider_message_is_stored_not_refused(self, db: Any) -> None:
        big = await _ingest(
            db,
            InboundMessage(
                conversation_external_id="<big@x>",
                message_external_id="<big@x>",
                text="x" * 100_000,
                contact_external_id="a@example.org",
            ),
        )
        assert "[shortened" in big.message.text and len(big.message.text.encode()) <= 16 * 1024
        blank = await _ingest(
            db,
            InboundMessage(
                conversation_external_id="<blank@x>",
                message_external_id="<blank@x>",
                text="   \u200b  ",
                contact_external_id="a@example.org",
            ),
        )
        assert blank.message.text


class TestAttachmentDownload:
    async def test_any_file_name_downloads_with_an_encoded_header(
        self, client: Any, db: Any
    ) -> None:
        desk = await make_desk(db)
        inbound = InboundMessage(
            conversation_external_id="c1",
            message_external_id="m1",
            text="чек",
            contact_external_id="bob@example.org",
            attachments=[InboundAttachment('счёт "1".png', "image/png", PNG)],
        )
        result = await _ingest(db, inbound)
        [ref] = result.message.attachments
        response = await client.get(f"/api/v1/attachments/{ref['id']}", headers=desk.as_agent())
        assert response.status_code == 200
        assert response.content == PNG
        disposition = response.headers["content-disposition"]
        assert disposition.startswith('inline; filename="')
        assert "filename*=UTF-8''%D1%81%D1%87%D1%91%D1%82%20%221%22.png" in disposition
        assert response.headers["x-content-type-options"] == "nosniff"
        assert (await client.get(f"/api/v1/attachments/{ref['id']}")).status_code == 401
        missing = await client.get("/api/v1/attachments/999999", headers=desk.as_agent())
        assert missing.status_code == 404
