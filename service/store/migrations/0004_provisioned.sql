-- When a worker last made sure the file system's storage exists. Until
-- then a snapshot of it waits instead of failing, because the creation
-- message may overtake the provisioning message.
ALTER TABLE file_systems ADD COLUMN provisioned_at timestamptz;
