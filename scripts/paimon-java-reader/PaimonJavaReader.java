import java.io.BufferedWriter;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.hadoop.conf.Configuration;
import org.apache.paimon.catalog.Catalog;
import org.apache.paimon.catalog.CatalogContext;
import org.apache.paimon.catalog.CatalogFactory;
import org.apache.paimon.catalog.Identifier;
import org.apache.paimon.data.BinaryString;
import org.apache.paimon.data.InternalRow;
import org.apache.paimon.data.Timestamp;
import org.apache.paimon.options.Options;
import org.apache.paimon.predicate.Predicate;
import org.apache.paimon.predicate.PredicateBuilder;
import org.apache.paimon.reader.RecordReader;
import org.apache.paimon.table.Table;
import org.apache.paimon.table.source.DataSplit;
import org.apache.paimon.table.source.ReadBuilder;
import org.apache.paimon.table.source.Split;
import org.apache.paimon.types.DataField;
import org.apache.paimon.types.DataType;
import org.apache.paimon.types.DataTypeChecks;

/**
 * Reads every row of a Paimon table with Paimon's own Java reader and prints it as JSON lines,
 * for tests that compare it with what the connector wrote.
 *
 * <pre>java -cp CLASSPATH PaimonJavaReader WAREHOUSE DATABASE.TABLE [OPTION=VALUE ...] [-- DATABASE.TABLE ...]</pre>
 *
 * Reads one table or more (one JVM for several reads); OPTION=VALUE pairs are dynamic table
 * options of that read (e.g. scan.snapshot-id=3), except where.FIELD=VALUE: a filter FIELD =
 * VALUE (integer and string fields) pushed down to the scan and the read, as a Java query would.
 * Paimon filters on a best-effort basis (it skips files and row groups by their statistics, not
 * every row), so the rows returned are a superset of the matching rows.
 *
 * Output, for each read: a header line {"version": Paimon's version, "table": name,
 * "snapshot": the snapshot read (null when the table is empty), "filter": the filter or null, "splits": n,
 * "fields": [{"name", "type"}, ...]}, then one JSON array per row: the row kind ("+I", "-U", "+U", "-D") and the field values.
 * Values round-trip exactly: integers and booleans as JSON; DOUBLE and FLOAT (widened) as
 * Java's shortest round-trip decimal (NaN and +-Infinity as bare tokens, which Python's json
 * accepts); DECIMAL as its plain string; CHAR/VARCHAR as strings; BINARY/VARBINARY as base64;
 * DATE as days since 1970-01-01; TIME as milliseconds of the day; TIMESTAMP and TIMESTAMP_LTZ
 * as [epoch milliseconds, nanoseconds within the millisecond]; NULL as null.
 */
public final class PaimonJavaReader {

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: PaimonJavaReader WAREHOUSE DATABASE.TABLE [OPTION=VALUE ...] [-- DATABASE.TABLE ...]");
            System.exit(2);
        }
        Options catalogOptions = new Options();
        catalogOptions.set("warehouse", args[0]);
        // An empty Hadoop configuration: Paimon's default would build an HdfsConfiguration (the
        // HDFS client jar); a local warehouse is read by Paimon's own LocalFileIO.
        CatalogContext context = CatalogContext.create(catalogOptions, new Configuration(false));
        Writer out = new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8), 1 << 16);
        try (Catalog catalog = CatalogFactory.createCatalog(context)) {
            int i = 1;
            while (i < args.length) {
                String name = args[i++];
                Map<String, String> dynamic = new HashMap<>();
                while (i < args.length && !args[i].equals("--")) {
                    int eq = args[i].indexOf('=');
                    if (eq < 0) {
                        throw new IllegalArgumentException("OPTION=VALUE expected, got " + args[i]);
                    }
                    dynamic.put(args[i].substring(0, eq), args[i].substring(eq + 1));
                    i++;
                }
                i++;  // the "--"
                Map<String, String> where = new TreeMap<>();
                for (String key : new ArrayList<>(dynamic.keySet())) {
                    if (key.startsWith("where.")) {
                        where.put(key.substring("where.".length()), dynamic.remove(key));
                    }
                }
                Table table = catalog.getTable(Identifier.fromString(name));
                if (!dynamic.isEmpty()) {
                    table = table.copy(dynamic);
                }
                read(table, filter(table, where), out);
            }
        }
        out.flush();
    }

    /** One read: its header line, then its rows. */
    private static void read(Table table, Predicate filter, Writer out) throws Exception {
        List<DataField> fields = table.rowType().getFields();
        ReadBuilder builder = table.newReadBuilder();
        if (filter != null) {
            builder = builder.withFilter(filter);
        }
        List<Split> splits = builder.newScan().plan().splits();
        Long snapshot = null;
        for (Split split : splits) {
            if (split instanceof DataSplit) {
                snapshot = ((DataSplit) split).snapshotId();
            }
        }
        StringBuilder line = new StringBuilder();
        line.append("{\"version\": ");
        String version = Table.class.getPackage().getImplementationVersion();  // the bundle jar's manifest
        string(line, version == null ? "unknown" : version);
        line.append(", \"table\": ");
        string(line, table.fullName());
        line.append(", \"snapshot\": ").append(snapshot);
        line.append(", \"filter\": ");
        if (filter == null) line.append("null"); else string(line, filter.toString());
        line.append(", \"splits\": ").append(splits.size()).append(", \"fields\": [");
        for (int f = 0; f < fields.size(); f++) {
            if (f > 0) line.append(", ");
            line.append("{\"name\": ");
            string(line, fields.get(f).name());
            line.append(", \"type\": ");
            string(line, fields.get(f).type().asSQLString());
            line.append('}');
        }
        line.append("]}\n");
        out.write(line.toString());

        try (RecordReader<InternalRow> reader = builder.newRead().createReader(splits)) {
            reader.forEachRemaining(row -> {
                StringBuilder s = new StringBuilder(256);
                s.append('[');
                string(s, row.getRowKind().shortString());
                for (int f = 0; f < fields.size(); f++) {
                    s.append(", ");
                    value(s, row, f, fields.get(f).type());
                }
                s.append("]\n");
                try {
                    out.write(s.toString());
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            });
        }
    }

    /** The conjunction of FIELD = VALUE for each where.FIELD=VALUE (integers and strings). */
    private static Predicate filter(Table table, Map<String, String> where) {
        if (where.isEmpty()) {
            return null;
        }
        PredicateBuilder builder = new PredicateBuilder(table.rowType());
        List<Predicate> terms = new ArrayList<>();
        for (Map.Entry<String, String> e : where.entrySet()) {
            int index = table.rowType().getFieldIndex(e.getKey());
            if (index < 0) {
                throw new IllegalArgumentException("no field " + e.getKey());
            }
            DataType type = table.rowType().getTypeAt(index);
            String v = e.getValue();
            Object literal;
            switch (type.getTypeRoot()) {
                case TINYINT: literal = Byte.parseByte(v); break;
                case SMALLINT: literal = Short.parseShort(v); break;
                case INTEGER: literal = Integer.parseInt(v); break;
                case BIGINT: literal = Long.parseLong(v); break;
                case CHAR:
                case VARCHAR: literal = BinaryString.fromString(v); break;
                default: throw new UnsupportedOperationException("no filter literal for " + type);
            }
            terms.add(builder.equal(index, literal));
        }
        return PredicateBuilder.and(terms);
    }

    private static void value(StringBuilder s, InternalRow row, int pos, DataType type) {
        if (row.isNullAt(pos)) {
            s.append("null");
            return;
        }
        switch (type.getTypeRoot()) {
            case BOOLEAN: s.append(row.getBoolean(pos)); break;
            case TINYINT: s.append(row.getByte(pos)); break;
            case SMALLINT: s.append(row.getShort(pos)); break;
            case INTEGER: s.append(row.getInt(pos)); break;
            case BIGINT: s.append(row.getLong(pos)); break;
            case FLOAT: s.append(Double.toString(row.getFloat(pos))); break;
            case DOUBLE: s.append(Double.toString(row.getDouble(pos))); break;
            case DECIMAL:
                string(s, row.getDecimal(pos, DataTypeChecks.getPrecision(type), DataTypeChecks.getScale(type))
                        .toBigDecimal().toPlainString());
                break;
            case CHAR:
            case VARCHAR: string(s, row.getString(pos).toString()); break;
            case BINARY:
            case VARBINARY: string(s, Base64.getEncoder().encodeToString(row.getBinary(pos))); break;
            case DATE:
            case TIME_WITHOUT_TIME_ZONE: s.append(row.getInt(pos)); break;
            case TIMESTAMP_WITHOUT_TIME_ZONE:
            case TIMESTAMP_WITH_LOCAL_TIME_ZONE:
                Timestamp t = row.getTimestamp(pos, DataTypeChecks.getPrecision(type));
                s.append('[').append(t.getMillisecond()).append(", ").append(t.getNanoOfMillisecond()).append(']');
                break;
            default:
                throw new UnsupportedOperationException("no JSON form for " + type);
        }
    }

    private static void string(StringBuilder s, String v) {
        s.append('"');
        for (int i = 0; i < v.length(); i++) {
            char c = v.charAt(i);
            switch (c) {
                case '"': s.append("\\\""); break;
                case '\\': s.append("\\\\"); break;
                case '\n': s.append("\\n"); break;
                case '\r': s.append("\\r"); break;
                case '\t': s.append("\\t"); break;
                default:
                    if (c < 0x20) s.append(String.format("\\u%04x", (int) c));
                    else s.append(c);
            }
        }
        s.append('"');
    }
}
