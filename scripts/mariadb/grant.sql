-- docker-compose.yml runs this once, when the MariaDB volume is new: the service tests create
-- a database of their own per test, so the `outbox` user needs more than its one database.
GRANT ALL PRIVILEGES ON *.* TO 'outbox'@'%';
FLUSH PRIVILEGES;
