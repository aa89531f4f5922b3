DROP TABLE events;
DROP TABLE billkey_removals;
DROP TABLE charges;
DROP TABLE subscriptions;
