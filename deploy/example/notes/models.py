from django.db import models


class Note(models.Model):
    """Lives in the ``default`` group: written to the primary, read from the replica."""

    text = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "text": self.text, "created_at": self.created_at.isoformat()}


class AuditEntry(models.Model):
    """Lives in the ``legacy`` MySQL database (``MULTIPOOL_ROUTES`` in settings)."""

    action = models.CharField(max_length=50)
    note_id = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
