#!/usr/bin/perl
# SpamAssassin Bayes driver for benches/peers/peers.py.
#
# One long-lived process (spawning sa-learn per message is far too slow).
# Only the Bayes rule is loaded and scored; no network tests.
#
# Usage: sa_bayes.pl STATEDIR [MIN_HAM MIN_SPAM [RULESDIR]]
# Commands on stdin, one per line; one answer line each on stdout:
#   C PATH          -> "S <bayes probability>"  or "S NA" (no Bayes answer yet)
#   L spam|ham PATH -> "L 1" (learned) or "L 0" (not learned, e.g. already seen)
#   N               -> "N <nspam> <nham>" (what the Bayes DB holds)
#   Q               -> exits
# The Bayes DB is tied and untied inside each call (SpamAssassin's default when
# learn_caller_will_untie is not set): keeping it tied between calls makes the
# Perl API drop learns silently.
use strict;
use warnings;
use Mail::SpamAssassin;

my ($dir, $min_ham, $min_spam, $rules_src) = @ARGV;
die "usage: $0 STATEDIR [MIN_HAM MIN_SPAM [RULESDIR]]\n" unless defined $dir;
$min_ham  = 200 unless defined $min_ham;
$min_spam = 200 unless defined $min_spam;
$rules_src = '/usr/share/spamassassin' unless defined $rules_src;

for my $d ("$dir/rules", "$dir/site", "$dir/state") {
    mkdir $d or die "mkdir $d: $!\n" unless -d $d;
}
# SpamAssassin's own defaults that Bayes uses (prefs, TLD list for URIs, stop words); no other rules.
for my $f ('10_default_prefs.cf', '20_aux_tlds.cf', '60_bayes_stopwords.cf') {
    my $src = "$rules_src/$f";
    symlink $src, "$dir/rules/$f" if -e $src && !-e "$dir/rules/$f";
}
open my $fh, '>', "$dir/site/local.pre" or die "$dir/site/local.pre: $!\n";
print $fh "loadplugin Mail::SpamAssassin::Plugin::Check\n";
print $fh "loadplugin Mail::SpamAssassin::Plugin::Bayes\n";
close $fh;
open $fh, '>', "$dir/site/local.cf" or die "$dir/site/local.cf: $!\n";
print $fh <<"EOF";
use_bayes 1
bayes_auto_learn 0
bayes_path $dir/state/bayes
bayes_min_ham_num $min_ham
bayes_min_spam_num $min_spam
body MR_BAYES eval:check_bayes('0.00', '1.00')
tflags MR_BAYES learn
score MR_BAYES 0.001
EOF
close $fh;

my $sa = Mail::SpamAssassin->new({
    rules_filename       => "$dir/rules",
    site_rules_filename  => "$dir/site",
    userprefs_filename   => "$dir/user_prefs",
    userstate_dir        => "$dir/state",
    home_dir_for_helpers => $dir,
    dont_copy_prefs      => 1,
    local_tests_only     => 1,
});
$sa->compile_now(0, 1);

sub slurp {
    my ($path) = @_;
    open my $in, '<:raw', $path or return undef;
    local $/;
    my $text = <$in>;
    close $in;
    return $text;
}

$| = 1;
while (my $line = <STDIN>) {
    chomp $line;
    if ($line =~ /^C (.+)$/) {
        my $text = slurp($1);
        if (!defined $text) { print "S NA\n"; next; }
        my $msg = $sa->parse($text, 0);
        my $pms = $sa->check($msg);
        my $p = $pms->{bayes_score};
        $pms->finish();
        $msg->finish();
        print defined $p ? sprintf("S %.17g\n", $p) : "S NA\n";
    } elsif ($line =~ /^L (spam|ham) (.+)$/) {
        my $isspam = $1 eq 'spam' ? 1 : 0;
        my $text = slurp($2);
        if (!defined $text) { print "L 0\n"; next; }
        my $msg = $sa->parse($text, 0);
        my $status = $sa->learn($msg, undef, $isspam, 0);
        my $did = $status->did_learn() ? 1 : 0;
        $status->finish();
        $msg->finish();
        print "L $did\n";
    } elsif ($line eq 'N') {
        # The Bayes plugin object keeps the store; reach it through the plugin list.
        my ($ns, $nn) = (-1, -1);
        for my $plugin (@{$sa->{plugins}->{plugins} || []}) {
            next unless ref($plugin) eq 'Mail::SpamAssassin::Plugin::Bayes' && $plugin->{store};
            if ($plugin->{store}->tie_db_readonly()) {
                ($ns, $nn) = $plugin->{store}->nspam_nham_get();
                $plugin->{store}->untie_db();
            }
        }
        print "N $ns $nn\n";
    } elsif ($line eq 'Q') {
        last;
    } else {
        print "E unknown command\n";
    }
}
$sa->finish();
