// pgJDBC through pgvane's split port (see ../README.md). prepareThreshold=1
// makes the driver use named server-side statements at once.
import java.sql.*;

public class Smoke {
    public static void main(String[] a) throws Exception {
        String port = System.getenv("PGVANE_PORT"), leader = System.getenv("LEADER_IP");
        try (Connection c = DriverManager.getConnection(
                "jdbc:postgresql://127.0.0.1:" + port + "/postgres?prepareThreshold=1", "postgres", "postgres")) {
            // First, before any write (reads follow a session's writes to the leader for 1 s).
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("select host(inet_server_addr())")) {
                r.next(); check(!r.getString(1).equals(leader), "read reached the leader");
            }
            try (Statement s = c.createStatement()) {
                s.execute("create table if not exists drv_jdbc(id int primary key, v text)");
                s.execute("delete from drv_jdbc");
            }
            try (PreparedStatement p = c.prepareStatement("insert into drv_jdbc values (?, ?)")) {
                for (int i = 0; i < 3; i++) { p.setInt(1, i); p.setString(2, "v" + i); p.executeUpdate(); }
            }
            try (PreparedStatement p = c.prepareStatement("select v from drv_jdbc where id = ?")) {
                for (int k = 0; k < 3; k++) {
                    p.setInt(1, 1);
                    try (ResultSet r = p.executeQuery()) { r.next(); check(r.getString(1).equals("v1"), "select"); }
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("insert into drv_jdbc values (10, 'tx')");
                try (ResultSet r = s.executeQuery("select count(*) from drv_jdbc")) { r.next(); check(r.getInt(1) == 4, "count"); }
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement()) {
                s.executeQuery("select 1/0");
                check(false, "no error");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "wrong error " + e.getSQLState());
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("select 1")) { r.next(); check(r.getInt(1) == 1, "unusable"); }
        }
        System.out.println("OK");
    }

    static void check(boolean ok, String what) {
        if (!ok) { System.out.println("FAILED: " + what); System.exit(1); }
    }
}
