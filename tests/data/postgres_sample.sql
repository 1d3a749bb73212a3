-- A small database that exercises what a dump must carry across.
CREATE TABLE customers (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL,
    note    text,
    avatar  bytea,
    balance numeric(12, 2),
    created timestamptz NOT NULL DEFAULT '2026-01-02 03:04:05+00'
);
INSERT INTO customers (name, note, avatar, balance) VALUES
    ('Zoë Ünïcødé', 'emoji 😀 and 𝄞 (4-byte)', '\x00ff10deadbeef00'::bytea, 12.50),
    ('NULLs', NULL, NULL, NULL),
    ('quote''s "and" \backslash', E'tab\there\nnewline', '\x'::bytea, -0.01),
    ('中文名字', 'ﾊﾝｶｸ', decode(repeat('ab', 300), 'hex'), 99999.99);

CREATE TABLE audit (id serial PRIMARY KEY, customer_id bigint, action text);

CREATE VIEW rich_customers AS SELECT id, name FROM customers WHERE balance > 10;

CREATE FUNCTION greet(who text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'hello ' || who $$;

CREATE PROCEDURE add_customer(who text) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customers (name) VALUES (who);
END $$;

CREATE FUNCTION log_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (customer_id, action) VALUES (NEW.id, 'insert');
    RETURN NEW;
END $$;

CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW EXECUTE FUNCTION log_insert();

CALL add_customer('via procedure');
