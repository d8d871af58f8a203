"""Rule-based tags: a tag defined by a saved segment, added and removed by a job as members enter and leave."""
