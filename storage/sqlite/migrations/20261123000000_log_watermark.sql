-- Herald's SQLite schema, version 2: the append log's watermark.
--
-- Appends are committed first to the append log (a second database file next to this one, `<file>-log`) and
-- folded into `messages` later, in batches. `folded_upto` is the highest log position whose row is in `messages`;
-- the fold that copies the last rows records it in the same transaction. At open, log rows up to it are deleted
-- and the rest are folded again (`INSERT OR IGNORE`: some may be in `messages` already).
CREATE TABLE log_watermark (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    folded_upto  INTEGER NOT NULL CHECK (folded_upto >= 0)
);
