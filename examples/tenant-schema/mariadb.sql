-- The issue tracker of postgres.sql on MariaDB (10.7 or later, for the UUID type). Load it into
-- two databases, "backup" and "live":
--   mariadb --init-command='SET @sites = 20' backup < examples/tenant-schema/mariadb.sql
-- MariaDB cannot switch triggers off for one session: a trigger that must not record a restore
-- tests `@rewind_restore IS NULL` (rewind sets it in the copy's session), as `audit` does here.
SET NAMES utf8mb4;
SET @sites = COALESCE(@sites, 20);

CREATE TABLE sites (
    id                 UUID PRIMARY KEY,
    name               VARCHAR(200) NOT NULL,
    created_at         DATETIME(6) NOT NULL,
    settings           JSON,
    logo               VARBINARY(64),
    default_project_id BIGINT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE users (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    site_id      UUID NOT NULL,
    email        VARCHAR(200) NOT NULL,
    display_name VARCHAR(200),
    born         DATE,
    score        DOUBLE,
    FOREIGN KEY (site_id) REFERENCES sites (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE projects (
    id      BIGINT AUTO_INCREMENT PRIMARY KEY,
    site_id UUID NOT NULL,
    `key`   VARCHAR(20) NOT NULL,
    lead_id BIGINT,
    tags    JSON,
    budget  DECIMAL(30, 10),
    UNIQUE (site_id, `key`),
    FOREIGN KEY (site_id) REFERENCES sites (id),
    FOREIGN KEY (lead_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

ALTER TABLE sites ADD FOREIGN KEY (default_project_id) REFERENCES projects (id);

CREATE TABLE issues (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    project_id   BIGINT NOT NULL,
    parent_id    BIGINT,
    reporter_id  BIGINT,
    title        VARCHAR(500) NOT NULL,
    body         TEXT,
    points       JSON,
    due          TIMESTAMP(6) NULL,
    opened       DATETIME NOT NULL,
    done         BOOLEAN NOT NULL DEFAULT FALSE,
    title_length INT AS (CHAR_LENGTH(title)) STORED,
    FOREIGN KEY (project_id) REFERENCES projects (id),
    FOREIGN KEY (parent_id) REFERENCES issues (id),
    FOREIGN KEY (reporter_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE comments (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    issue_id   BIGINT NOT NULL,
    author_id  BIGINT,
    reply_to   BIGINT,
    body       TEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    FOREIGN KEY (issue_id) REFERENCES issues (id),
    FOREIGN KEY (author_id) REFERENCES users (id),
    FOREIGN KEY (reply_to) REFERENCES comments (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE attachments (
    comment_id BIGINT NOT NULL,
    seq        INT NOT NULL,
    file_name  VARCHAR(200) NOT NULL,
    content    BLOB,
    meta       JSON,
    PRIMARY KEY (comment_id, seq),
    FOREIGN KEY (comment_id) REFERENCES comments (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE attachment_views (
    comment_id BIGINT NOT NULL,
    seq        INT NOT NULL,
    viewer     UUID,
    viewed_at  DATETIME(6),
    FOREIGN KEY (comment_id, seq) REFERENCES attachments (comment_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Not tenant data: no foreign key reaches `sites`. The restore must not write to it.
CREATE TABLE audit_log (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    table_name VARCHAR(64) NOT NULL,
    op         VARCHAR(10) NOT NULL,
    row_id     VARCHAR(64),
    at         DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TRIGGER issues_audit_ins AFTER INSERT ON issues FOR EACH ROW
    INSERT INTO audit_log (table_name, op, row_id)
    SELECT 'issues', 'INSERT', NEW.id FROM DUAL WHERE @rewind_restore IS NULL;
CREATE TRIGGER issues_audit_del AFTER DELETE ON issues FOR EACH ROW
    INSERT INTO audit_log (table_name, op, row_id)
    SELECT 'issues', 'DELETE', OLD.id FROM DUAL WHERE @rewind_restore IS NULL;
CREATE TRIGGER comments_audit_ins AFTER INSERT ON comments FOR EACH ROW
    INSERT INTO audit_log (table_name, op, row_id)
    SELECT 'comments', 'INSERT', NEW.id FROM DUAL WHERE @rewind_restore IS NULL;
CREATE TRIGGER comments_audit_del AFTER DELETE ON comments FOR EACH ROW
    INSERT INTO audit_log (table_name, op, row_id)
    SELECT 'comments', 'DELETE', OLD.id FROM DUAL WHERE @rewind_restore IS NULL;

-- Data: the same tenants as postgres.sql (ids: md5('site-N') as a version-4 uuid).
CREATE TEMPORARY TABLE nums (n INT PRIMARY KEY, site UUID NOT NULL);
INSERT INTO nums
WITH RECURSIVE r (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < @sites)
SELECT n, CONCAT_WS('-', SUBSTR(MD5(CONCAT('site-', n)), 1, 8), SUBSTR(MD5(CONCAT('site-', n)), 9, 4),
                    CONCAT('4', SUBSTR(MD5(CONCAT('site-', n)), 14, 3)),
                    CONCAT('8', SUBSTR(MD5(CONCAT('site-', n)), 18, 3)), SUBSTR(MD5(CONCAT('site-', n)), 21))
FROM r;
CREATE TEMPORARY TABLE two (k INT PRIMARY KEY);
INSERT INTO two VALUES (1), (2);
CREATE TEMPORARY TABLE three (k INT PRIMARY KEY);
INSERT INTO three VALUES (1), (2), (3);

INSERT INTO sites (id, name, created_at, settings, logo)
SELECT site, CONCAT('Site ', n, '\t"quoted" \\ back\nslash ünïcødé 🚀'),
       TIMESTAMPADD(MICROSECOND, n * 123456, TIMESTAMPADD(HOUR, n, '2022-01-01 00:00:00')),
       JSON_OBJECT('plan', 'premium', 'seats', n, 'flags', JSON_ARRAY(TRUE, NULL, 1.5)),
       IF(n % 3 = 0, NULL, UNHEX(CONCAT('00ff', LPAD(HEX(n), 4, '0'), '00')))
FROM nums;

INSERT INTO users (site_id, email, display_name, born, score)
SELECT site, CONCAT('u', u.k, '@site', n, '.example'),
       IF(u.k = 2, NULL, CONCAT('User ', u.k, ' O''Brien')),
       DATE_ADD('1980-02-29', INTERVAL n DAY), IF(u.k = 1, 0.1e0 + 0.2e0, 1e308)
FROM nums, two u ORDER BY n, u.k;

INSERT INTO projects (site_id, `key`, lead_id, tags, budget)
SELECT site, CONCAT('P', p.k), (SELECT MIN(id) FROM users WHERE site_id = site),
       IF(p.k = 1, JSON_ARRAY('a,b', 'c"d', NULL, 'e\nf'), NULL),
       12345678901234567890.0123456789 / p.k
FROM nums, two p ORDER BY n, p.k;

UPDATE sites s SET default_project_id = (SELECT MIN(id) FROM projects p WHERE p.site_id = s.id);

INSERT INTO issues (project_id, reporter_id, title, body, points, due, opened)
SELECT p.id, p.lead_id, CONCAT('Issue ', i.k, ' of ', p.`key`),
       IF(i.k = 3, NULL, 'line 1\nline 2\ttab \\N not null'),
       JSON_ARRAY(i.k, NULL, -i.k), IF(i.k % 2 = 0, '2022-04-05 02:03:00.500000', NULL),
       TIMESTAMPADD(DAY, i.k, '2022-03-01 12:00:00')
FROM projects p, three i ORDER BY p.id, i.k;

CREATE TEMPORARY TABLE firsts AS SELECT project_id, MIN(id) AS first FROM issues GROUP BY project_id;
UPDATE issues c JOIN firsts f ON f.project_id = c.project_id
SET c.parent_id = f.first WHERE c.title LIKE 'Issue 3 %';

INSERT INTO comments (issue_id, author_id, body, created_at)
SELECT i.id, IF(k.k = 2, NULL, i.reporter_id), CONCAT('Comment ', k.k, ' on ', i.title),
       TIMESTAMPADD(MINUTE, k.k, '2022-03-02 00:00:00')
FROM issues i, two k ORDER BY i.id, k.k;

CREATE TEMPORARY TABLE first_comments AS SELECT issue_id, MIN(id) AS first FROM comments GROUP BY issue_id;
UPDATE comments c JOIN first_comments f ON f.issue_id = c.issue_id
SET c.reply_to = f.first WHERE c.body LIKE 'Comment 2 %';

INSERT INTO attachments (comment_id, seq, file_name, content, meta)
SELECT c.id, s.k, CONCAT('file-', s.k, '.bin'), UNHEX(CONCAT('000102', LPAD(HEX(s.k), 2, '0'))),
       IF(s.k = 1, '{"size": 4, "a": [1, 2]}', NULL)
FROM comments c, two s WHERE c.reply_to IS NULL;

INSERT INTO attachment_views (comment_id, seq, viewer, viewed_at)
SELECT a.comment_id, a.seq,
       CONCAT('00000000-0000-4000-8000-', LPAD(a.seq, 12, '0')),
       '2022-03-03 10:00:00.000001'
FROM attachments a;
