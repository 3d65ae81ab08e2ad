"""The synthetic corpus's words (``synth`` makes posts of them): the ten seed tags, the shared
background vocabulary (common programming English, pronounceable pseudo-words, Zipf ranks) with
its open-ended long tail of identifier-like rare words, and each tag's topical words (``_Vocabulary``).
Everything here is a fixed function of constants: the same for every corpus seed."""

from __future__ import annotations

import numpy as np


SEED_TAGS = ["c#", "java", "php", "javascript", "android", "jquery", "c++", "python", "iphone", "asp.net"]
"""The ten tags, in the label-id order (0..9) of the original notebooks."""

_C, _JAVA, _PHP, _JS, _AND, _JQ, _CPP, _PY, _IOS, _ASP = range(10)

_ZIPF_S, _ZIPF_Q = 1.05, 2.7
_N_PSEUDO = 2600
_VOCAB_SEED = 20120831  # fixed: the vocabulary is the same for every corpus seed

_COMMON_WORDS = """
the i to a is and in it this of that my for have not but with on be can when how do what if an
from as get so are using want would like or it's need there error all way by trying just one some
use i'm only which at code here know am working problem does will also then no following new other
data file value find where tried see make has same set help below example could work seems first
values time show any should thanks these each user page more different now because after into out
them being getting something back up list solution doesn't add running change possible create run
text return call issue question able method case name while without load update second server
database line simple table output result display type form field two used me we you your our they
their its than very well even still try got been was were did done had there's don't can't isn't
problem everything anything nothing someone anyone way ways thing things idea ideas best better
good easy simple simply correct correctly wrong right left top bottom inside outside between
through over under before again always never already almost currently actually really basically
function functions class classes object objects method methods variable variables array arrays
string strings number numbers integer int loop loops condition statement statements parameter
parameters argument arguments property properties instance instances library libraries framework
project projects application app apps program programs script scripts module modules package tool
tools version versions update updates install installed build built compile compiled debug
debugging test tests testing unit result results return returns returned call calls called
request requests response responses query queries record records row rows column columns item items
element elements node nodes key keys index size length count total max min sort sorted order
filter search match matches pattern format convert converted parse parsing read write save saved
open close delete remove removed insert inserted select selected click clicked button buttons
input output image images file files folder directory path url link links web website site browser
client server database db sql table tables connection connect connected network http https
message messages exception exceptions warning warnings log logs print printed display displayed
screen window windows view views control controls event events handler handlers user users login
password account email name names date time timer day days hour minutes seconds memory performance
fast slow faster slower speed large small big huge empty null default custom dynamic static global
local remote public private protected shared single multiple several many few each every both
either another other others same similar different specific certain particular whole part parts
first last next previous new old current following above below example examples sample tutorial
documentation docs answer answers question questions stack overflow google searched found looked
tried trying attempt attempted works working worked fails failed failing breaks broken crash crashes
crashed throws thrown shows showing shown seems seem appears appear happens happen happened
instead also too either though although however because since unless until whether why which
""".split()

_SYLLABLES_ONSET = "b c d f g h j k l m n p r s t v w z br cr dr fl gr pl pr st tr ch sh th".split()
_SYLLABLES_NUCLEUS = "a e i o u ai ea ou io".split()
_SYLLABLES_CODA = ["", "", "", "n", "r", "s", "t", "l", "m", "x", "nd", "st"]

# Topical word lists: "~" stands for a space inside one multi-word term, and the four HTML
# entities are already escaped (titles unescape them).

_TOPICAL = {
    _C: """c# csharp .net linq lambda namespace using system console.writeline string.format winforms
        wpf xaml datagridview visual~studio vs2010 ienumerable list&lt;t&gt; dictionary foreach
        delegate eventhandler async await task nullable int32 tostring() messagebox.show form1
        backgroundworker entity~framework dbcontext sqlconnection sqlcommand datatable dataset
        xmlserializer reflection generics interface struct override virtual sealed readonly get;
        set; assembly dll nuget mono unity serialport thread.sleep invoke datetime regex
        streamreader httpwebrequest webclient clr""",
    _JAVA: """java jvm jdk jre eclipse netbeans maven ant jar classpath public~static~void~main
        system.out.println string[] arraylist hashmap swing jframe jpanel actionlistener awt
        servlet jsp tomcat spring hibernate jpa junit javax import~java.util extends implements
        throws nullpointerexception synchronized runnable jdbc resultset preparedstatement log4j
        applet bufferedreader scanner inputstream outputstream serializable @override bean
        glassfish jboss struts javafx stacktrace getclass() jtable jbutton""",
    _PHP: """php &lt;?php ?&gt; $_post $_get $_session $_server echo mysql_query mysql_fetch_array
        mysqli pdo $this-&gt; -&gt; array() isset explode implode str_replace preg_match
        preg_replace require_once .htaccess apache mod_rewrite wordpress drupal joomla codeigniter
        zend symfony laravel cakephp smarty phpmyadmin xampp wamp localhost session_start $row
        $sql $result $conn curl json_encode json_decode strtotime magento composer php.ini
        var_dump print_r die() mysql_connect $var htmlspecialchars $_files""",
    _JS: """javascript js var function() document.getelementbyid window onclick onload alert()
        console.log innerhtml dom addeventlistener settimeout setinterval closure prototype
        undefined typeof json.parse json.stringify xmlhttprequest callback parseint math.random
        canvas html5 node.js npm eval scope hoisting iframe chrome firefox ie8 greasemonkey
        bookmarklet &lt;script&gt; .js onsubmit window.location document.write getattribute
        style.display new~date() backbone.js angularjs knockout underscore requirejs ecmascript
        regexp""",
    _AND: """android activity intent androidmanifest.xml layout linearlayout relativelayout
        textview edittext listview arrayadapter baseadapter fragment oncreate onresume bundle
        savedinstancestate setcontentview findviewbyid r.id r.layout toast logcat emulator avd
        android~sdk adt apk dalvik broadcastreceiver contentprovider sqlite sqliteopenhelper cursor
        sharedpreferences asynctask handler notification alertdialog imageview bitmap drawable
        webview google~maps gps locationmanager uses-permission actionbar viewpager phonegap
        galaxy nexus ndk""",
    _JQ: """jquery $( $(document).ready $(this) .click( .on( .live( .bind( $.ajax $.get $.post
        $.getjson .each( .find( .val( .html( .text( .attr( .prop( .css( .addclass .removeclass
        .toggle( .hide() .show() .fadein .fadeout .animate( .slidedown .slideup .append(
        .prepend( .parent() .children( .closest( .siblings( selector jquery-ui datepicker dialog
        autocomplete draggable sortable plugin fancybox lightbox colorbox jquery-validate jqgrid
        datatables slider carousel tooltip e.preventdefault() $(window) .serialize() success:
        datatype: jquery.min.js .trigger( .keyup( .change( .submit( .load(""",
    _CPP: """c++ cpp std::vector std::string std::cout std::endl #include &lt;iostream&gt; template
        typename stl boost pointer const destructor constructor malloc g++ gcc msvc visual~c++
        header .h .cpp linker undefined~reference segfault segmentation~fault operator&lt;&lt;
        overloading namespace~std std::map iterator int~main() cin qt mfc win32 shared_ptr
        unique_ptr smart~pointer c++11 rvalue move~semantics typedef char* sizeof memory~leak
        valgrind cmake makefile opengl""",
    _PY: """python import def self __init__ print django flask pip virtualenv numpy scipy pandas
        matplotlib list~comprehension dict tuple yield generator decorator __name__ __main__
        if~__name__ raise except try: with~open( os.path sys.argv urllib urllib2 requests
        beautifulsoup scrapy tkinter pygame wxpython pyqt py2exe ipython python2.7 python3
        unicode encode decode pickle json.loads subprocess multiprocessing setup.py easy_install
        pep8 indentation unittest sqlalchemy celery""",
    _IOS: """iphone ios ipad objective-c xcode cocoa cocoa-touch uiview uiviewcontroller
        uitableview uitableviewcell uinavigationcontroller uibutton uilabel uiimage uiimageview
        uiscrollview uiwebview uialertview nsstring nsarray nsmutablearray nsdictionary
        nsuserdefaults nsurlconnection nsdata nsdate nslog @property @synthesize @interface
        @implementation iboutlet ibaction interface~builder storyboard segue dealloc retain
        autorelease simulator provisioning app~store ios5 ios6 core~data cllocationmanager
        mkmapview avaudioplayer viewdidload cgrect xib appdelegate push~notification testflight
        cocos2d""",
    _ASP: """asp.net asp aspx .aspx .ascx web.config iis mvc asp.net-mvc razor @html controller
        actionresult viewbag viewdata model~binding webforms gridview repeater updatepanel
        scriptmanager postback ispostback viewstate runat=&quot;server&quot; &lt;asp:button
        &lt;asp:label code-behind page_load response.redirect request.querystring server.transfer
        membership forms~authentication global.asax httpcontext webmethod asmx wcf web~service
        ajax~control~toolkit vb.net sql~server linq~to~sql masterpage usercontrol iis7 cassini
        httphandler jsonresult partial~view webapi .net""",
}


def _pseudo_words(n: int, exclude: set[str]) -> list[str]:
    """``n`` distinct pronounceable pseudo-words from a fixed-seed generator (same for every corpus)."""
    rng = np.random.default_rng(_VOCAB_SEED)
    words: list[str] = []
    seen = set(exclude)
    while len(words) < n:
        k = 4 * (n - len(words))
        n_syl = rng.integers(1, 4, k)
        on = rng.integers(0, len(_SYLLABLES_ONSET), (k, 3))
        nu = rng.integers(0, len(_SYLLABLES_NUCLEUS), (k, 3))
        co = rng.integers(0, len(_SYLLABLES_CODA), k)
        for i in range(k):
            syl = "".join(_SYLLABLES_ONSET[on[i, s]] + _SYLLABLES_NUCLEUS[nu[i, s]] for s in range(n_syl[i]))
            word = syl + _SYLLABLES_CODA[co[i]]
            if len(word) > 2 and word not in seen:
                seen.add(word)
                words.append(word)
                if len(words) == n:
                    break
    return words


def _unescape(text: str) -> str:
    """Undo the four HTML entities used in the topical word lists (for plain-text titles)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


class _Vocabulary:
    """Word tables: background words first (Zipf ranks), then each tag's topical words.

    ``html`` holds the escaped form used in the Body, ``plain`` the raw form used in titles;
    ``topic_start[t]``/``topic_len[t]`` locate tag ``t``'s topical block; ``bg_cdf`` is the Zipf
    cumulative distribution over the background block.
    """

    def __init__(self) -> None:
        common = list(dict.fromkeys(_COMMON_WORDS))
        background = common + _pseudo_words(_N_PSEUDO, set(common))
        topical = [[w.replace("~", " ") for w in _TOPICAL[t].split()] for t in range(len(SEED_TAGS))]
        escaped_bg = [w.replace("'", "&#39;") for w in background]
        self.html = np.array(escaped_bg + [w for block in topical for w in block], dtype=object)
        self.html_cap = _capitalised(self.html)
        self.plain = np.array([_unescape(w.replace("&#39;", "'")) for w in self.html], dtype=object)
        self.n_background = len(background)
        self.topic_len = np.array([len(block) for block in topical])
        self.topic_start = self.n_background + np.concatenate([[0], np.cumsum(self.topic_len)[:-1]])
        ranks = np.arange(self.n_background, dtype=float)
        pmf = (ranks + _ZIPF_Q) ** -_ZIPF_S
        self.bg_cdf = np.cumsum(pmf / pmf.sum())
        self._tail_ranks = np.zeros(0, dtype=np.int64)  # sorted ranks of tail words added so far
        self._tail_ids = np.zeros(0, dtype=np.int64)  # their word ids, aligned with _tail_ranks

    def tail_ids(self, ranks: np.ndarray) -> np.ndarray:
        """Word ids of long-tail ``ranks``, appending the words not seen before to the tables."""
        uniq, inverse = np.unique(ranks, return_inverse=True)
        new = np.setdiff1d(uniq, self._tail_ranks, assume_unique=True)
        if new.size:
            words = _tail_words(new)
            ids = self.html.size + np.arange(new.size)
            self.html = np.concatenate([self.html, words])
            self.html_cap = np.concatenate([self.html_cap, _capitalised(words)])
            self.plain = np.concatenate([self.plain, words])
            ranks_all = np.concatenate([self._tail_ranks, new])
            order = np.argsort(ranks_all, kind="stable")
            self._tail_ranks = ranks_all[order]
            self._tail_ids = np.concatenate([self._tail_ids, ids])[order]
        return self._tail_ids[np.searchsorted(self._tail_ranks, uniq)][inverse]


_TAIL_SYLLABLES = np.array([o + n for o in _SYLLABLES_ONSET for n in _SYLLABLES_NUCLEUS], dtype=object)


def _tail_words(ranks: np.ndarray) -> np.ndarray:
    """Identifier-like rare words for long-tail ``ranks`` (a fixed function of the rank).

    The rank is scrambled into three syllables; by ``rank % 4`` the word is the three
    syllables, two syllables and a number, ``snake_case`` or a ``get``/``set``/``is`` name.
    """
    n_syl = _TAIL_SYLLABLES.size
    mixed = (ranks * 2_654_435_761) % (n_syl**3)
    a, b, c = mixed % n_syl, (mixed // n_syl) % n_syl, mixed // n_syl**2
    first, second, third = _TAIL_SYLLABLES[a], _TAIL_SYLLABLES[b], _TAIL_SYLLABLES[c]
    number = (ranks // 4 % 97 + 1).astype(str).astype(object)
    prefix = np.array(["get", "set", "is", "on"], dtype=object)[(ranks // 4) % 4]
    forms = np.stack([first + second + third, first + second + number,
                      first + second + "_" + third, prefix + first + second + third])
    return forms[ranks % 4, np.arange(ranks.size)]


def _capitalised(words: np.ndarray) -> np.ndarray:
    """Elementwise first-letter-uppercase copy of an object array of strings."""
    return np.array([w[:1].upper() + w[1:] if w[:1].isalpha() else w for w in words], dtype=object)
