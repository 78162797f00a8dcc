-- One database per service: no service reads another's tables.
CREATE DATABASE microblog_users;
CREATE DATABASE microblog_messages;
CREATE DATABASE microblog_notifications;
