-- 0003: a close's comment is stored whole. messages.msg was TEXT (64 KiB), so
-- a comment that max_body admits (up to 8 MiB) was refused by a strict server
-- or cut short by a lax one. MEDIUMTEXT holds 16 MiB. MODIFY is idempotent.
ALTER TABLE messages MODIFY msg MEDIUMTEXT NOT NULL;
