-- A small database that exercises what a dump must carry across.
CREATE TABLE customers (
    id      BIGINT AUTO_INCREMENT PRIMARY KEY,
    name    VARCHAR(200) NOT NULL,
    note    TEXT,
    avatar  BLOB,
    balance DECIMAL(12, 2),
    created DATETIME NOT NULL DEFAULT '2026-01-02 03:04:05'
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO customers (name, note, avatar, balance) VALUES
    ('Zoë Ünïcødé', 'emoji 😀 and 𝄞 (4-byte)', X'00FF10DEADBEEF00', 12.50),
    ('NULLs', NULL, NULL, NULL),
    ('quote''s "and" \\backslash', 'tab\there\nnewline', X'', -0.01),
    ('中文名字', 'ﾊﾝｶｸ', REPEAT(X'AB', 300), 99999.99);

CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT, action VARCHAR(20))
    ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE VIEW rich_customers AS SELECT id, name FROM customers WHERE balance > 10;

DELIMITER //
CREATE FUNCTION greet(who VARCHAR(100)) RETURNS VARCHAR(200) DETERMINISTIC RETURN CONCAT('hello ', who)//
CREATE PROCEDURE add_customer(IN who VARCHAR(100)) BEGIN INSERT INTO customers (name) VALUES (who); END//
CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW
    BEGIN INSERT INTO audit (customer_id, action) VALUES (NEW.id, 'insert'); END//
DELIMITER ;

CALL add_customer('via procedure');
